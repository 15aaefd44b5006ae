"""The weights topic: every replica's latest weights, keyed by replica, for averaging.

Each replica publishes `(replica_id, sample_count, weights, version, time)` every
`model.sync_every_s` and reads everyone's latest (its own included) to adopt their
sample-weighted average (`daemon/core/averaging.py`). Compacted: only the newest record per
replica matters. The reader keeps its position, so each sync reads only what is new (Tansu 0.6.0
does not compact, and re-reading the topic from the start would grow without bound there).

Record: key = replica id; value = `.npz` of the arrays `w0..wN` (read with
`allow_pickle=False`); header `lstmd-weights-meta` = JSON {sample_count, version, time, arrays}.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from daemon.core.averaging import ReplicaWeights, Weights, live

log = logging.getLogger("lstmd.weights_topic")

META_HEADER = "lstmd-weights-meta"
# Under Kafka's default message.max.bytes (1 MiB) with room for key and headers. A 16-unit LSTM
# is a few KB; a model past this needs chunking like the state topic (not built).
MAX_WEIGHTS_BYTES = 900_000
PUBLISH_TIMEOUT_S = 30.0
READ_POLL_MS = 100
COMPACT = {"cleanup.policy": "compact"}


def ensure_weights_topic(options: dict[str, Any], topic: str) -> None:
    """Create the compacted weights topic (one partition: replicas are few) if it is missing."""
    admin = KafkaAdminClient(**options)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, 1, 1, topic_configs=COMPACT)])
    finally:
        admin.close()


def encode_weights(weights: Weights) -> bytes:
    """Return the weights as `.npz` bytes (arrays `w0..wN`, in order)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{f"w{i}": w for i, w in enumerate(weights)})
    return buffer.getvalue()


def decode_weights(value: bytes, count: int) -> Weights:
    """Return the `count` arrays of an `encode_weights` value."""
    with np.load(io.BytesIO(value), allow_pickle=False) as archive:
        return [archive[f"w{i}"] for i in range(count)]


class WeightsTopic:
    """Publish this replica's weights and follow every replica's latest.

    Args:
        options: from `kafka_io.client_options`.
        topic: the weights topic (`kafka.weights_topic`, created with `ensure_weights_topic`).
        replica_id: this replica's key (the pod name, or `kafka.group_instance_id`).
    """

    def __init__(self, options: dict[str, Any], topic: str, replica_id: str) -> None:
        self._topic = topic
        self.replica_id = replica_id
        self._producer = KafkaProducer(**options, acks="all", enable_idempotence=True)
        self._consumer = KafkaConsumer(**options, group_id=None, enable_auto_commit=False)
        partitions = self._consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise RuntimeError(f"weights topic {topic} does not exist; create it first")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._latest: dict[str, ReplicaWeights] = {}

    def publish(self, sample_count: int, weights: Weights, version: int) -> float:
        """Publish this replica's weights; return the publication time once acknowledged.

        Raises:
            ValueError: the weights are too large for one record.
            RuntimeError: the broker did not acknowledge the record.
        """
        value = encode_weights(weights)
        if len(value) > MAX_WEIGHTS_BYTES:
            raise ValueError(f"weights are {len(value)} B, over {MAX_WEIGHTS_BYTES} B per record")
        now = time.time()
        meta = {
            "sample_count": sample_count,
            "version": version,
            "time": now,
            "arrays": len(weights),
        }
        future = self._producer.send(
            self._topic,
            key=self.replica_id.encode("utf-8"),
            value=value,
            headers=[(META_HEADER, json.dumps(meta).encode("utf-8"))],
        )
        try:
            future.get(timeout=PUBLISH_TIMEOUT_S)
        except KafkaError as exc:
            raise RuntimeError(f"weights not published to {self._topic}: {exc!r}") from exc
        return now

    def latest(self) -> dict[str, ReplicaWeights]:
        """Read the topic to its end and return the latest weights of every replica."""
        tps = list(self._consumer.assignment())
        ends = self._consumer.end_offsets(tps)
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while True:
            batch = self._consumer.poll(timeout_ms=READ_POLL_MS)
            records = [record for records in batch.values() for record in records]
            for record in records:
                self._take(record)
            at_end = all(self._consumer.position(tp) >= ends.get(tp, 0) for tp in tps)
            if (at_end and not records) or time.monotonic() >= deadline:
                return dict(self._latest)

    def live(self, now: float, sync_every_s: float) -> list[ReplicaWeights]:
        """Return the latest weights of the replicas that published recently enough to count."""
        return live(list(self.latest().values()), now, sync_every_s)

    def _take(self, record: Any) -> None:
        replica = (record.key or b"").decode("utf-8", errors="replace")
        if record.value is None:
            self._latest.pop(replica, None)  # a tombstone: the replica left for good
            return
        try:
            meta = json.loads(dict(record.headers or ()).get(META_HEADER, b"{}"))
            weights = decode_weights(record.value, int(meta["arrays"]))
            self._latest[replica] = ReplicaWeights(
                replica,
                int(meta["sample_count"]),
                weights,
                int(meta["version"]),
                float(meta["time"]),
            )
        except (KeyError, ValueError, OSError) as exc:
            log.warning(
                "unreadable weights record skipped", extra={"replica": replica, "problem": str(exc)}
            )

    def close(self) -> None:
        """Release the producer and the reader."""
        self._producer.close(timeout=PUBLISH_TIMEOUT_S)
        self._consumer.close(autocommit=False)
