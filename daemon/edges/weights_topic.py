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
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from daemon.core.averaging import ReplicaWeights, Weights, live
from daemon.core.untrusted import (
    UntrustedRecord,
    finite_number,
    load_npz,
    matching_arrays,
    whole_number,
)

log = logging.getLogger("lstmd.weights_topic")

META_HEADER = "lstmd-weights-meta"
# Under Kafka's default message.max.bytes (1 MiB) with room for key and headers. A 16-unit LSTM
# is a few KB; a model past this needs chunking like the state topic (not built).
MAX_WEIGHTS_BYTES = 900_000
# Both wait on the loop thread, well inside `health.stall_s` (60 s by default).
PUBLISH_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 5.0
READ_POLL_MS = 100
COMPACT = {"cleanup.policy": "compact"}
# What a record may claim (DESIGN §11: the weights topic is untrusted input). A publication
# stamped further ahead than this clock skew would count as live forever in a compacted topic.
MAX_CLOCK_SKEW_S = 300.0
# A replica's trained events: 10**12 is ~30 years at 1,000 events/s, and keeps the averaging's
# float64 shares exact. It bounds the claim, not its honesty: see docs on the weights topic's ACL.
MAX_SAMPLE_COUNT = 10**12
MAX_VERSION = 2**62
MAX_META_BYTES = 4096
# A template names each weight array's (shape, dtype): this model's own `get_weights()`.
Template = list[tuple[tuple[int, ...], np.dtype]]
# Called with (reason, detail) for every record skipped.
Rejected = Callable[[str, str], None]


def ensure_weights_topic(options: dict[str, Any], topic: str, replication_factor: int = -1) -> None:
    """Create the compacted weights topic (one partition: replicas are few) if it is missing."""
    admin = KafkaAdminClient(**options)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, 1, replication_factor, topic_configs=COMPACT)])
    finally:
        admin.close()


def encode_weights(weights: Weights) -> bytes:
    """Return the weights as `.npz` bytes (arrays `w0..wN`, in order)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{f"w{i}": w for i, w in enumerate(weights)})
    return buffer.getvalue()


def template_of(weights: Weights) -> Template:
    """Return the (shape, dtype) of each weight array, what a record must match."""
    return [(tuple(w.shape), np.dtype(w.dtype)) for w in weights]


def decode_weights(value: bytes, template: Template) -> Weights:
    """Return the arrays of an `encode_weights` value, checked against this model's template.

    Raises:
        UntrustedRecord: not an uncompressed `.npz`, other arrays, shapes or dtypes, or values
            that are not finite.
    """
    arrays = load_npz(value, max_arrays=len(template))
    names = [f"w{i}" for i in range(len(template))]
    if sorted(arrays) != sorted(names):
        raise UntrustedRecord("shape", f"arrays {sorted(arrays)[:5]}, this model {len(names)}")
    weights = [arrays[name] for name in names]
    matching_arrays(weights, template, "weight")
    return weights


def decode_record(
    key: bytes | None, value: bytes, headers: Any, template: Template, now: float
) -> ReplicaWeights:
    """Return one weights record as a replica's weights, every field checked.

    Raises:
        UntrustedRecord: a key, header, count, version, time or array that is not what this
            lstmd writes for this model.
    """
    try:
        replica = (key or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise UntrustedRecord("bad_key", "replica id is not UTF-8") from None
    if not replica or len(replica) > 512:
        raise UntrustedRecord("bad_key", "replica id is empty or over 512 characters")
    meta = _meta(headers)
    whole_number(meta.get("arrays"), "arrays", len(template), len(template))
    count = whole_number(meta.get("sample_count"), "sample_count", 0, MAX_SAMPLE_COUNT)
    version = whole_number(meta.get("version"), "version", 0, MAX_VERSION)
    published = finite_number(meta.get("time"), "time", 0.0, now + MAX_CLOCK_SKEW_S)
    return ReplicaWeights(replica, count, decode_weights(value, template), version, published)


def _meta(headers: Any) -> dict[str, Any]:
    try:
        raw = dict(headers or ()).get(META_HEADER)
    except (TypeError, ValueError):
        raise UntrustedRecord("bad_meta", "headers are not name/value pairs") from None
    if not isinstance(raw, bytes) or len(raw) > MAX_META_BYTES:
        raise UntrustedRecord("bad_meta", f"header {META_HEADER} missing or too large")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise UntrustedRecord("bad_meta", f"header {META_HEADER} is not JSON") from None
    if not isinstance(meta, dict):
        raise UntrustedRecord("bad_meta", f"header {META_HEADER} is not an object")
    return meta


class WeightsTopic:
    """Publish this replica's weights and follow every replica's latest.

    Args:
        options: from `kafka_io.client_options`.
        topic: the weights topic (`kafka.weights_topic`, created with `ensure_weights_topic`).
        replica_id: this replica's key (the pod name, or `kafka.group_instance_id`).
        template: this model's weights' (shape, dtype) (`template_of(model.get_weights())`);
            records that do not match are skipped.
        rejected: told (reason, detail) of every record skipped (a metric, a warning).
    """

    def __init__(
        self,
        options: dict[str, Any],
        topic: str,
        replica_id: str,
        template: Template,
        rejected: Rejected | None = None,
    ) -> None:
        self._topic = topic
        self.replica_id = replica_id
        self._template = template
        self._rejected = rejected or _log_rejected
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
            RuntimeError: the broker did not acknowledge the record, or the client failed.
        """
        try:
            return self._publish(sample_count, weights, version)
        except KafkaError as exc:  # KafkaTimeoutError from send() among them
            raise RuntimeError(f"weights not published to {self._topic}: {exc!r}") from exc

    def _publish(self, sample_count: int, weights: Weights, version: int) -> float:
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
        """Read the topic to its end and return the latest valid weights of every replica.

        Raises:
            RuntimeError: the client failed (a timeout, the broker gone).
        """
        try:
            return self._latest_now()
        except KafkaError as exc:
            raise RuntimeError(f"weights topic {self._topic} not read: {exc!r}") from exc

    def _latest_now(self) -> dict[str, ReplicaWeights]:
        tps = list(self._consumer.assignment())
        ends = self._consumer.end_offsets(tps, timeout_ms=int(READ_TIMEOUT_S * 1000))
        deadline = time.monotonic() + READ_TIMEOUT_S
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
        if record.value is None:
            replica = (record.key or b"").decode("utf-8", errors="replace")
            self._latest.pop(replica, None)  # a tombstone: the replica left for good
            return
        try:
            weights = decode_record(
                record.key, record.value, record.headers, self._template, time.time()
            )
        except UntrustedRecord as exc:
            self._rejected(exc.reason, f"offset {record.offset}: {exc.detail}")
            return
        self._latest[weights.replica_id] = weights

    def close(self) -> None:
        """Release the producer and the reader."""
        self._producer.close(timeout=PUBLISH_TIMEOUT_S)
        self._consumer.close(autocommit=False)


def _log_rejected(reason: str, detail: str) -> None:
    log.warning("weights record skipped", extra={"reason": reason, "detail": detail})
