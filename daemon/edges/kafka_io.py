"""Kafka I/O: the names the rest of lstmd imports, gathered from the modules that hold them.

`daemon.edges` is the only package that imports `kafka` (kafka-python). Each concept has its
module: `connection` (client options), `messages` (`RawMessage`), `consumer` (`EventSource`),
`publisher` (`Publisher`), `publisher_process` (`ProcessPublisher`, the predictions' producer in
a child process), `topics` (administration) and `bulk` (replay and read-all for tools and
tests). Everything above sees plain data: `RawMessage` in, `(topic, partition)` tuples and
offsets for commits, bytes out.
"""

from __future__ import annotations

from daemon.edges.bulk import produce_values, read_all
from daemon.edges.connection import RECONNECT_BACKOFF, client_options
from daemon.edges.consumer import OFFSETS_TIMEOUT_MS, EventSource, PartitionCallback
from daemon.edges.messages import PartitionKey, RawMessage
from daemon.edges.publisher import (
    DEAD_LETTER_DETAIL_MAX_BYTES,
    DEAD_LETTER_KEY_MAX_BYTES,
    PRODUCER_MAX_BLOCK_MS,
    RECORD_OVERHEAD_BYTES,
    UNKNOWN_TOPIC_RECHECK_S,
    Publisher,
    undeliverable_reason,
)
from daemon.edges.publisher_process import ProcessPublisher, PublisherGone
from daemon.edges.topics import committed_offsets, ensure_topics, partition_count

__all__ = [
    "DEAD_LETTER_DETAIL_MAX_BYTES",
    "DEAD_LETTER_KEY_MAX_BYTES",
    "OFFSETS_TIMEOUT_MS",
    "PRODUCER_MAX_BLOCK_MS",
    "RECONNECT_BACKOFF",
    "RECORD_OVERHEAD_BYTES",
    "UNKNOWN_TOPIC_RECHECK_S",
    "EventSource",
    "PartitionCallback",
    "PartitionKey",
    "ProcessPublisher",
    "Publisher",
    "PublisherGone",
    "RawMessage",
    "client_options",
    "committed_offsets",
    "ensure_topics",
    "partition_count",
    "produce_values",
    "read_all",
    "undeliverable_reason",
]
