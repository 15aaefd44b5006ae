"""Topic administration: create topics and wait for them, partition counts, committed offsets.

Notes measured against the embedded Tansu 0.6.0 broker:

* Admin CreateTopics works (TopicAlreadyExists is returned for duplicates), and producing to an
  unknown topic auto-creates it with several partitions; create topics explicitly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

METADATA_POLL_INTERVAL_S = 0.1


def ensure_topics(
    options: dict[str, Any],
    topics: Sequence[str],
    partitions: int = 1,
    timeout_s: float = 30,
    replication_factor: int = -1,
) -> None:
    """Create the topics that are missing and wait until metadata shows them with leaders.

    Args:
        options: from `client_options`.
        topics: topic names.
        partitions: partition count for topics created here (existing ones are left alone).
        timeout_s: how long to wait for the metadata.
        replication_factor: for topics created here; -1 takes the broker's default.

    Raises:
        TimeoutError: a topic did not appear with a leader for every partition in time.
    """
    admin = KafkaAdminClient(**options)
    try:
        wanted = list(dict.fromkeys(topics))
        existing = set(admin.list_topics())
        for topic in (t for t in wanted if t not in existing):
            # Another process may win the race to create it; that is what we wanted anyway.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic, partitions, replication_factor)])
        _wait_for_topics(admin, wanted, timeout_s)
    finally:
        admin.close()


def partition_count(options: dict[str, Any], topic: str) -> int:
    """Return how many partitions an existing topic has (0 when the broker does not know it)."""
    consumer = KafkaConsumer(**options, group_id=None)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close(autocommit=False)


def _wait_for_topics(admin: KafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            described = admin.describe_topics(topics)
        except KafkaError:
            described = []  # Not in metadata yet.
        if len(described) == len(topics) and all(_topic_ready(d) for d in described):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics {topics} not ready after {timeout_s:g} s")
        time.sleep(METADATA_POLL_INTERVAL_S)


def _topic_ready(description: dict[str, Any]) -> bool:
    parts = description.get("partitions") or []
    return (
        description.get("error_code") == 0
        and bool(parts)
        and all(p["error_code"] == 0 and p["leader_id"] >= 0 for p in parts)
    )


def committed_offsets(options: dict[str, Any], group_id: str, topic: str) -> dict[int, int]:
    """Return the group's committed offsets for a topic, partition → next offset to read."""
    consumer = KafkaConsumer(**options, group_id=group_id, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        committed = {tp.partition: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close(autocommit=False)
    return {partition: offset for partition, offset in committed.items() if offset is not None}
