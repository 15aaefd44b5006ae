"""The state topic: each input partition's key-state store, in a compacted Kafka topic.

How a partition's state moves to its next owner (DESIGN.md §10): the owner writes it here
(`StateTopic.write`, which returns only once every record is acknowledged), then commits the
input offset the state reflects; the next owner reads it back (`StateTopic.read`) and resumes
from exactly that offset. Record layout and checksums: `daemon/persist/partition_state.py`.

The state topic has as many partitions as the input topic, and input partition p's records go to
state partition p (mod its count), as Kafka Streams does with changelogs: a new owner reads only
the state partitions of what it was assigned. Within one state partition records keep their
order, so the newest manifest of a key wins; chunks are acknowledged before their manifest is
sent, so a manifest never refers to chunks that are not stored.

Measured against Tansu 0.6.0: see README (restore of a 100,000-key partition) and the notes on
`ensure_state_topic`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from daemon.core.untrusted import UntrustedRecord
from daemon.persist.partition_state import (
    PartitionState,
    chunk_key,
    decode,
    decode_manifest,
    encode,
    encode_manifest,
    manifest_key,
    other_slot,
)

log = logging.getLogger("lstmd.state_topic")

# kafka-python refuses records over max_request_size (1 MiB by default, as is Kafka's
# message.max.bytes); half of it leaves room for the key, headers and batch overhead.
STATE_CHUNK_BYTES = 512 * 1024
STATE_MAX_REQUEST_BYTES = 1_048_576
# A write's chunks and manifests share one deadline. The loop waits for it (checkpoints run on
# the loop thread), so the caller passes less than `health.stall_s`; this is the longest.
WRITE_TIMEOUT_S = 60.0
READ_POLL_MS = 200
# Tansu's end offsets may trail the last batch (kafka_io notes): after reaching them, one empty
# poll this long confirms the end.
READ_IDLE_S = 0.5
READ_TIMEOUT_S = 120.0
WRITE_ID_HEADER = "lstmd-write-id"
COMPACT = {"cleanup.policy": "compact"}
# Called with (reason, detail) for every record or stored state skipped.
Rejected = Callable[[str, str], None]


def _log_rejected(reason: str, detail: str) -> None:
    log.warning("state record skipped", extra={"reason": reason, "detail": detail})


def ensure_state_topic(
    options: dict[str, Any], topic: str, partitions: int, replication_factor: int = -1
) -> dict[str, str]:
    """Create the state topic compacted (if missing) and return its configs as the broker says.

    Args:
        options: from `kafka_io.client_options`.
        topic: the state topic (`kafka.state_topic`).
        partitions: as many as the input topic has.
        replication_factor: -1 takes the broker's default (`kafka.replication_factor`).

    Returns:
        The topic's `cleanup.policy` and the other configs the broker reports (empty if it does
        not answer DescribeConfigs), so a caller can warn when compaction is off.
    """
    admin = KafkaAdminClient(**options)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(
                [NewTopic(topic, partitions, replication_factor, topic_configs=COMPACT)]
            )
        try:
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        except KafkaError as exc:
            log.warning("state topic configs unknown", extra={"error": repr(exc)})
            return {}
    finally:
        admin.close()
    return _configs(described)


def _configs(described: Any) -> dict[str, str]:
    # kafka-python 3 answers {"topic": {name: {config: value}}}.
    topics = described.get("topic", {}) if isinstance(described, dict) else {}
    return {str(k): str(v) for configs in topics.values() for k, v in (configs or {}).items()}


class StateTopic:
    """Write and read per-partition states of one input topic in the state topic.

    Args:
        options: from `kafka_io.client_options`.
        state_topic: the compacted state topic (created with `ensure_state_topic`).
        input_topic: the input topic whose partitions' states these are; lstmd passes
            `{group_id}/{input_topic}`, so that each consumer group keeps its own states.
        chunk_bytes: the largest chunk.
        rejected: told (reason, detail) of every record or stored state skipped.
    """

    def __init__(
        self,
        options: dict[str, Any],
        state_topic: str,
        input_topic: str,
        chunk_bytes: int = STATE_CHUNK_BYTES,
        rejected: Rejected | None = None,
    ) -> None:
        self._options = options
        self._rejected = rejected or _log_rejected
        self._topic = state_topic
        self._input = input_topic
        self._chunk_bytes = chunk_bytes
        self._producer = KafkaProducer(
            **options,
            acks="all",
            enable_idempotence=True,
            max_request_size=STATE_MAX_REQUEST_BYTES,
            linger_ms=5,
        )
        self._partitions = self._state_partitions()
        # Per input partition: the slot of its newest manifest and the chunk count per slot,
        # from our reads and writes; used to pick the free slot and to tombstone stale chunks.
        self._slots: dict[int, tuple[str | None, dict[str, int]]] = {}

    def _state_partitions(self) -> int:
        consumer = KafkaConsumer(**self._options, group_id=None)
        try:
            found = consumer.partitions_for_topic(self._topic)
        finally:
            consumer.close(autocommit=False)
        if not found:
            raise RuntimeError(
                f"state topic {self._topic} does not exist; create it with ensure_state_topic"
            )
        return len(found)

    def write(
        self, states: Mapping[int, PartitionState], timeout_s: float = WRITE_TIMEOUT_S
    ) -> None:
        """Store every partition's state; return only when every record is acknowledged.

        Chunks (and tombstones for chunks the slot no longer uses) first, then, once those are
        acknowledged, the manifests. Commit the offsets only after this returns.

        Args:
            states: per input partition, its state.
            timeout_s: the whole write's deadline, chunks and manifests together.

        Raises:
            RuntimeError: a record was not acknowledged in time, or the client failed (a
                timeout, the broker gone); nothing of this write may be relied on.
        """
        try:
            self._write(states, time.monotonic() + timeout_s)
        except KafkaError as exc:  # KafkaTimeoutError among them: not a RuntimeError
            raise RuntimeError(
                f"state topic {self._topic}: write failed: {type(exc).__name__}: {exc}; "
                "offsets must not be committed"
            ) from exc

    def _write(self, states: Mapping[int, PartitionState], deadline: float) -> None:
        manifests: list[tuple[int, dict[str, Any]]] = []
        errors: list[BaseException] = []
        for partition, state in states.items():
            current, counts = self._slots.get(partition, (None, {}))
            slot = other_slot(current)
            manifest, chunks = encode(state, self._input, partition, slot, self._chunk_bytes)
            header = [(WRITE_ID_HEADER, manifest["write_id"].encode("ascii"))]
            for index, chunk in enumerate(chunks):
                self._send(
                    partition, chunk_key(self._input, partition, slot, index), chunk, header, errors
                )
            for index in range(len(chunks), counts.get(slot, 0)):
                self._send(
                    partition, chunk_key(self._input, partition, slot, index), None, [], errors
                )
            manifests.append((partition, manifest))
        self._flush(errors, "chunks", deadline)
        for partition, manifest in manifests:
            self._send(
                partition,
                manifest_key(self._input, partition),
                encode_manifest(manifest),
                [],
                errors,
            )
        self._flush(errors, "manifests", deadline)
        for partition, manifest in manifests:
            _, counts = self._slots.get(partition, (None, {}))
            self._slots[partition] = (
                manifest["slot"],
                {**counts, manifest["slot"]: len(manifest["chunks"])},
            )

    def _send(
        self,
        partition: int,
        key: str,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        errors: list[BaseException],
    ) -> None:
        future = self._producer.send(
            self._topic,
            key=key.encode("utf-8"),
            value=value,
            headers=headers,
            partition=partition % self._partitions,
        )
        future.add_errback(errors.append)

    def _flush(self, errors: list[BaseException], what: str, deadline: float) -> None:
        self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        if errors:
            raise RuntimeError(
                f"state topic {self._topic}: {len(errors)} {what} not stored: {errors[0]!r}; "
                "offsets must not be committed"
            )

    def read(self, partitions: Iterable[int]) -> dict[int, PartitionState]:
        """Read the state topic to its end; return the newest verified state per partition.

        A partition with no state, or whose stored states all fail to verify, is left out (a
        damaged one is logged); nothing is half-loaded.
        """
        wanted = set(partitions)
        if not wanted:
            return {}
        records = self._read_partitions({p % self._partitions for p in wanted})
        try:
            manifests, chunks = _collect(records, self._input, wanted, self._rejected)
        except KafkaError as exc:
            raise RuntimeError(
                f"state topic {self._topic}: read failed: {type(exc).__name__}: {exc}"
            ) from exc
        out: dict[int, PartitionState] = {}
        for partition in sorted(wanted):
            state = self._newest_valid(partition, manifests.get(partition, []), chunks)
            if state is not None:
                out[partition] = state
        return out

    def _newest_valid(
        self, partition: int, manifests: list[dict[str, Any]], chunks: Chunks
    ) -> PartitionState | None:
        counts = _slot_counts(partition, chunks)
        for manifest in reversed(manifests):  # newest first; an older one may still verify
            parts = []
            for index in range(len(manifest["chunks"])):
                value, write_id = chunks.get((partition, manifest["slot"], index), (None, b""))
                parts.append(value if write_id == manifest["write_id"].encode() else None)
            try:
                state = decode(manifest, parts)
            except UntrustedRecord as exc:
                self._rejected(
                    exc.reason, f"partition {partition}, offset {manifest['offset']}: {exc.detail}"
                )
                continue
            self._slots[partition] = (manifest["slot"], counts)
            return state
        self._slots[partition] = (
            (None, counts) if not manifests else (manifests[-1]["slot"], counts)
        )
        return None

    def _read_partitions(self, state_partitions: set[int]) -> Iterator[Any]:
        consumer = KafkaConsumer(
            **self._options,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * STATE_MAX_REQUEST_BYTES,
        )
        try:
            tps = [TopicPartition(self._topic, p) for p in sorted(state_partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            yield from _drain(consumer, tps)
        finally:
            consumer.close(autocommit=False)

    def close(self) -> None:
        """Flush and release the producer."""
        self._producer.close(timeout=WRITE_TIMEOUT_S)


def _drain(consumer: KafkaConsumer, tps: list[TopicPartition]) -> Iterator[Any]:
    # A generator, so that superseded chunks are dropped as they come (Tansu keeps them all).
    ends = consumer.end_offsets(tps)
    if not any(ends.get(tp, 0) for tp in tps):
        # Nothing was ever written there (a first start): the polls below would only wait
        # READ_POLL_MS + READ_IDLE_S for records that cannot come, on every assignment.
        return
    deadline = time.monotonic() + READ_TIMEOUT_S
    while True:
        batch = consumer.poll(timeout_ms=READ_POLL_MS)
        got = [record for records in batch.values() for record in records]
        yield from got
        at_end = all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps)
        if at_end and not got:
            tail = consumer.poll(timeout_ms=int(READ_IDLE_S * 1000))
            more = [record for records in tail.values() for record in records]
            if not more:
                return
            yield from more
        if time.monotonic() >= deadline:
            raise TimeoutError(f"state topic not read to its end in {READ_TIMEOUT_S:g} s")


# Keys under `{input_topic}/`: a manifest, or a chunk of slot a or b. ASCII digits only: "²"
# is a digit to str.isdigit and not to int().
_MANIFEST_KEY = re.compile(r"([0-9]{1,10})/manifest")
_CHUNK_KEY = re.compile(r"([0-9]{1,10})/chunk/([ab])/([0-9]{1,6})")
# Chunks per (partition, slot, index); the newest record of each key wins.
Chunks = dict[tuple[int, str, int], tuple[bytes | None, bytes]]


def _collect(
    records: Iterable[Any], input_topic: str, wanted: set[int], rejected: Rejected
) -> tuple[dict[int, list[dict[str, Any]]], Chunks]:
    """Return the manifests per partition (oldest first) and the newest record per chunk.

    Records of other input topics (or groups) are passed over; records under this topic's
    prefix that are not what lstmd writes are skipped and reported.
    """
    manifests: dict[int, list[dict[str, Any]]] = {}
    chunks: Chunks = {}
    prefix = f"{input_topic}/".encode()
    for record in records:
        key = record.key or b""
        if not key.startswith(prefix):
            continue  # another input topic's state
        name = key[len(prefix) :].decode("ascii", errors="replace")
        if (manifest_key := _MANIFEST_KEY.fullmatch(name)) is not None:
            partition = int(manifest_key.group(1))
            if partition in wanted and record.value is not None:
                _take_manifest(manifests, partition, record, rejected)
        elif (chunk := _CHUNK_KEY.fullmatch(name)) is not None:
            partition = int(chunk.group(1))
            if partition in wanted:
                write_id = _header(record.headers, WRITE_ID_HEADER)
                chunks[(partition, chunk.group(2), int(chunk.group(3)))] = (record.value, write_id)
        else:
            rejected("bad_key", f"offset {record.offset}: key {name[:60]!r}")
    return manifests, chunks


def _take_manifest(
    manifests: dict[int, list[dict[str, Any]]], partition: int, record: Any, rejected: Rejected
) -> None:
    try:
        manifest = decode_manifest(record.value)
    except UntrustedRecord as exc:
        rejected(exc.reason, f"partition {partition}, offset {record.offset}: {exc.detail}")
        return
    if manifest.get("partition", partition) != partition:
        rejected("wrong_partition", f"manifest of {manifest['partition']} under {partition}")
        return
    manifests.setdefault(partition, []).append(manifest)


def _header(headers: Any, name: str) -> bytes:
    try:
        value = dict(headers or ()).get(name, b"")
    except (TypeError, ValueError):
        return b""
    return value if isinstance(value, bytes) else b""


def _slot_counts(partition: int, chunks: Chunks) -> dict[str, int]:
    """Return per slot one past the highest chunk index still holding a value."""
    counts: dict[str, int] = {}
    for (owner, slot, index), (value, _) in chunks.items():
        if owner == partition and value is not None:
            counts[slot] = max(counts.get(slot, 0), index + 1)
    return counts
