"""Bulk topic I/O for tools and tests: replay a data set into a topic, read a topic whole.

Tansu's ListOffsets(latest), i.e. `end_offsets()`, reports the last *batch's* base offset + 1,
not the last record's offset + 1, so `read_all` does not trust end offsets alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from daemon.edges.messages import RawMessage, raw_message

READ_POLL_TIMEOUT_MS = 100
# Bulk replay: fewer, larger requests. On Tansu acks="all" and acks=1 both gave ~37k records/s
# (50k x 42 B values, client-bound), so the safe setting costs nothing.
BULK_LINGER_MS = 20
BULK_BATCH_BYTES = 1_048_576
BULK_PROGRESS_EVERY = 1000
BULK_FLUSH_TIMEOUT_S = 120.0


def produce_values(
    options: dict[str, Any],
    topic: str,
    items: Iterable[tuple[bytes | None, bytes]],
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Produce `(key, value)` pairs as fast as possible, for replaying data sets.

    Args:
        options: from `client_options`.
        topic: destination topic.
        items: `(key, value)` pairs, sent in order.
        on_progress: called with the running count every 1000 records.

    Returns:
        The number of records produced.

    Raises:
        RuntimeError: any record failed; the message names the first error.
    """
    producer = KafkaProducer(
        **options, acks="all", linger_ms=BULK_LINGER_MS, batch_size=BULK_BATCH_BYTES
    )
    errors: list[BaseException] = []
    count = 0
    try:
        for key, value in items:
            producer.send(topic, key=key, value=value).add_errback(errors.append)
            count += 1
            if on_progress is not None and count % BULK_PROGRESS_EVERY == 0:
                on_progress(count)
        producer.flush(timeout=BULK_FLUSH_TIMEOUT_S)
    finally:
        producer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {count} records to {topic} failed: {errors[0]!r}")
    return count


def read_all(
    options: dict[str, Any], topic: str, timeout_s: float = 10, idle_s: float = 2
) -> list[RawMessage]:
    """Read a whole topic from the beginning, without a consumer group.

    Stops when every partition is read to its end offset and a poll comes back empty, after
    `idle_s` with nothing new, or at `timeout_s`, whichever is first.

    Args:
        options: from `client_options`.
        topic: the topic to read.
        timeout_s: overall limit.
        idle_s: give up this long after the last new record.

    Returns:
        The records, in order within each partition; empty if the topic does not exist.
    """
    consumer = KafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        return _drain(consumer, partitions, timeout_s, idle_s)
    finally:
        consumer.close(autocommit=False)


def _drain(
    consumer: KafkaConsumer, partitions: list[TopicPartition], timeout_s: float, idle_s: float
) -> list[RawMessage]:
    # Tansu's end offsets may stop at the last batch's first record, so reaching them is not
    # enough: the rest of that batch is already fetched and the next poll returns it.
    ends = consumer.end_offsets(partitions)
    start = last_new = time.monotonic()
    out: list[RawMessage] = []
    while True:
        batch = consumer.poll(timeout_ms=READ_POLL_TIMEOUT_MS)
        now = time.monotonic()
        got = [raw_message(record) for records in batch.values() for record in records]
        out.extend(got)
        if got:
            last_new = now
        at_end = all(consumer.position(tp) >= ends.get(tp, 0) for tp in partitions)
        if (at_end and not got) or now - last_new >= idle_s or now - start >= timeout_s:
            return out
