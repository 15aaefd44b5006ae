"""Kafka I/O: the only module that imports `kafka` (kafka-python).

Everything above this module sees plain data: `RawMessage` in, `(topic, partition)` tuples and
offsets for commits, bytes out. Notes measured against the embedded Tansu 0.6.0 broker:

* A consumer-group join (first assignment of a fresh consumer) takes ~3.0 s with
  session_timeout_ms=6000 and heartbeat_interval_ms=1000, consistently; it is the broker's
  join delay, not the session timeout.
* ListOffsets(latest), i.e. `end_offsets()`, reports the last *batch's* base offset + 1, not
  the last record's offset + 1: ten records produced in one batch show an end offset of 1. Fetch
  responses carry the correct high watermark, so lag uses the larger of the two and is clamped at
  zero, and `read_all` does not trust end offsets alone.
* Admin CreateTopics works (TopicAlreadyExists is returned for duplicates), and producing to an
  unknown topic auto-creates it with several partitions; create topics explicitly.
* Committing an offset inside a batch works: a new group member resumes at that exact record.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from daemon.settings import KafkaSettings

log = logging.getLogger("lstmd.kafka")

PartitionKey = tuple[str, int]
PartitionCallback = Callable[[set[PartitionKey]], None]

DEAD_LETTER_DETAIL_MAX_BYTES = 1000
# A dead letter's key is the source record's key, which may be as large as a whole message; cut
# it so that headers, key and value always fit one request (header `lstmd-original-key-bytes`).
DEAD_LETTER_KEY_MAX_BYTES = 1024
# Room a record needs beyond key, value and headers inside one produce request: the record batch
# header (61 B), the record's varints and attributes, per-header lengths; 512 B is ample.
RECORD_OVERHEAD_BYTES = 512
# During a broker outage clients retry connecting with exponential backoff, capped here so that a
# returning broker is found within seconds without hammering one that stays away.
RECONNECT_BACKOFF = {"reconnect_backoff_ms": 100, "reconnect_backoff_max_ms": 5000}
METADATA_POLL_INTERVAL_S = 0.1
# Offset look-ups (lag, retention checks) run on the loop's thread: during a network cut
# kafka-python would wait out its whole request timeout (30 s), holding the loop and /readyz.
OFFSETS_TIMEOUT_MS = 1000
# send() blocks at most this long for a topic's metadata (kafka-python's default is 60 s): a topic
# deleted under a running daemon then stalls the loop 10 s, once per UNKNOWN_TOPIC_RECHECK_S, and
# its records are dropped as undeliverable in between.
PRODUCER_MAX_BLOCK_MS = 10_000
UNKNOWN_TOPIC_RECHECK_S = 30.0
READ_POLL_TIMEOUT_MS = 100
# Bulk replay: fewer, larger requests. On Tansu acks="all" and acks=1 both gave ~37k records/s
# (50k x 42 B values, client-bound), so the safe setting costs nothing.
BULK_LINGER_MS = 20
BULK_BATCH_BYTES = 1_048_576
BULK_PROGRESS_EVERY = 1000
BULK_FLUSH_TIMEOUT_S = 120.0
# How often the IO loop checks whether a rebalance callback's worker thread is done. Short
# against a join's seconds; the loop serves heartbeats and commits in between.
REBALANCE_CALLBACK_POLL_S = 0.01


def client_options(kafka: KafkaSettings, bootstrap: str) -> dict[str, Any]:
    """Build the connection options shared by consumers, producers and admin clients.

    Args:
        kafka: the Kafka settings section.
        bootstrap: comma-separated `host:port` list actually used (the embedded broker's address
            when `kafka.bootstrap_servers` is empty).

    Returns:
        kafka-python keyword arguments; security options appear only when set, and secrets are
        unwrapped here and nowhere else.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap.split(",") if s.strip()],
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    optional = {
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_plain_username": kafka.sasl_username,
        "sasl_plain_password": _secret(kafka.sasl_password),
        "ssl_cafile": kafka.ssl_cafile,
        "ssl_certfile": kafka.ssl_certfile,
        "ssl_keyfile": kafka.ssl_keyfile,
        "ssl_password": _secret(kafka.ssl_password),
    }
    options.update({key: value for key, value in optional.items() if value is not None})
    return options


def _secret(value: Any) -> str | None:
    return None if value is None else value.get_secret_value()


def ensure_topics(
    options: dict[str, Any], topics: Sequence[str], partitions: int = 1, timeout_s: float = 30
) -> None:
    """Create the topics that are missing and wait until metadata shows them with leaders.

    Args:
        options: from `client_options`.
        topics: topic names.
        partitions: partition count for topics created here (existing ones are left alone).
        timeout_s: how long to wait for the metadata.

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
                admin.create_topics([NewTopic(topic, partitions, 1)])
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


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One record as read from Kafka, before any decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]


def _raw(record: Any) -> RawMessage:
    return RawMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        timestamp_ms=record.timestamp,
        # A null header value is legal on the wire; downstream wants bytes.
        headers=tuple((name, value or b"") for name, value in record.headers or ()),
    )


def _keys(partitions: Iterable[TopicPartition]) -> set[PartitionKey]:
    return {(tp.topic, tp.partition) for tp in partitions}


class _Listener(AsyncConsumerRebalanceListener):
    """Run the rebalance callbacks on a worker thread while the consumer's IO loop keeps going.

    kafka-python 3 runs rebalance listeners on its network (IO) thread, inside the `poll` of the
    user thread, which waits. A synchronous listener that commits fails there ("Cannot block on
    net.run() from the IO thread itself"), and any long work in it stops heartbeats. This
    listener is async: it hands each callback to a worker thread and yields to the loop until
    the worker is done, so a commit made by the callback (an ordinary blocking
    `EventSource.commit`) is served by the loop, heartbeats go on, and the rebalance proceeds
    only after the callback returned. The user thread is blocked in `poll` meanwhile, so the
    callback has the learner to itself.
    """

    def __init__(
        self,
        net: Any,
        on_assign: PartitionCallback | None,
        on_revoke: PartitionCallback | None,
        on_lost: PartitionCallback | None,
        counts: Counter[str],
    ) -> None:
        self._net = net
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._counts = counts

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        keys = _keys(revoked)
        if keys:
            self._counts["revoked"] += 1
        await self._off_loop(self._on_revoke, keys)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._counts["assigned"] += 1
        await self._off_loop(self._on_assign, _keys(assigned))

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        # Not a revoke: the group already gave these away, so nothing may be committed for them.
        self._counts["lost"] += 1
        log.warning("partitions lost", extra={"partitions": sorted(p for _, p in _keys(lost))})
        await self._off_loop(self._on_lost, _keys(lost))

    async def _off_loop(self, callback: PartitionCallback | None, keys: set[PartitionKey]) -> None:
        if callback is None:
            return
        outcome: dict[str, BaseException] = {}
        done = threading.Event()

        def work() -> None:
            try:
                callback(keys)
            except BaseException as exc:  # handed to the IO loop, which re-raises it from poll
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name="lstmd-rebalance", daemon=True).start()
        while not done.is_set():
            await self._net.sleep(REBALANCE_CALLBACK_POLL_S)
        if "error" in outcome:
            raise outcome["error"]


class EventSource:
    """A group consumer of the input topic that commits only what it is told to.

    The callbacks run on a worker thread while `poll`, which triggered them, waits (see
    `_Listener`); they may call `commit`, `seek` and `assignment`.

    Args:
        options: from `client_options`.
        kafka: supplies the topic (`input_topic`), `group_id`, `group_instance_id` and consumer
            tuning.
        on_assign: called with the newly assigned partitions, inside `poll`.
        on_revoke: called with the partitions being taken away, inside `poll`, before the
            rebalance; make their state durable and commit it here (the commit lands).
        on_lost: called with partitions the group took away without a revoke (this member's
            session expired); drop their state, commit nothing (it would be refused).

    Attributes:
        rebalances: completed group joins after the first assignment (each one a rebalance
            this member took part in).
    """

    def __init__(
        self,
        options: dict[str, Any],
        kafka: KafkaSettings,
        *,
        on_assign: PartitionCallback | None = None,
        on_revoke: PartitionCallback | None = None,
        on_lost: PartitionCallback | None = None,
    ) -> None:
        static = {"group_instance_id": kafka.group_instance_id} if kafka.group_instance_id else {}
        self._consumer = KafkaConsumer(
            **options,
            **RECONNECT_BACKOFF,
            **static,
            group_id=kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_records=kafka.max_poll_records,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        )
        self._topic = kafka.input_topic
        self._counts: Counter[str] = Counter()
        # kafka-python 3's IO loop: the listener yields to it while a callback runs.
        listener = _Listener(self._consumer._net, on_assign, on_revoke, on_lost, self._counts)
        self._consumer.subscribe([kafka.input_topic], listener=listener)

    @property
    def rebalances(self) -> int:
        """Return how many group joins completed after this member's first one."""
        return max(0, self._counts["assigned"] - 1)

    def poll(self, timeout_ms: int) -> list[RawMessage]:
        """Return the next records, flattened, in order within each partition."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        return [_raw(record) for records in batches.values() for record in records]

    def commit(self, offsets: Mapping[PartitionKey, int]) -> set[PartitionKey]:
        """Commit synchronously the offsets of partitions this member owns; skip the others.

        A replica must never move another replica's offsets: a partition that was revoked (or
        never assigned) is left out and logged. Inside `on_revoke` the revoked partitions are
        still owned, so their commit goes through.

        Args:
            offsets: per partition, the NEXT offset to read.

        Returns:
            The partitions committed.
        """
        owned = self.assignment()
        mine = {key: offset for key, offset in offsets.items() if key in owned}
        if len(mine) < len(offsets):
            skipped = sorted(p for key in offsets.keys() - owned for _, p in [key])
            log.warning(
                "not committing partitions this member does not own", extra={"partitions": skipped}
            )
        if not mine:
            return set()  # kafka-python would commit every consumed position instead.
        self._consumer.commit(
            {
                TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                for (topic, partition), offset in mine.items()
            }
        )
        return set(mine)

    def seek(self, partition: PartitionKey, offset: int) -> None:
        """Make the next poll of an assigned partition start at `offset`."""
        self._consumer.seek(TopicPartition(*partition), offset)

    def connected(self) -> bool:
        """Say whether a connection to any broker of the cluster is up.

        kafka-python has no public call for this; its client knows per node. If that internal
        API is missing (another client version), report connected rather than a false outage.
        """
        client = self._consumer._client
        try:
            nodes = [broker.node_id for broker in client.cluster.brokers()]
            return any(client.connected(node) for node in nodes)
        except AttributeError:
            return True

    def assignment(self) -> set[PartitionKey]:
        """Return the partitions currently assigned to this member."""
        return _keys(self._consumer.assignment())

    def lag(self) -> dict[PartitionKey, int]:
        """Return records not yet consumed per assigned partition; never negative.

        Raises:
            TimeoutError: the broker did not answer within `OFFSETS_TIMEOUT_MS`.
        """
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        try:
            ends = self._consumer.end_offsets(assigned, timeout_ms=OFFSETS_TIMEOUT_MS)
        except KafkaTimeoutError as exc:
            raise TimeoutError("end offsets not answered; broker unreachable?") from exc
        lags: dict[PartitionKey, int] = {}
        for tp in assigned:
            # Tansu's end offsets trail within the last batch; the fetch high watermark does not.
            end = max(ends.get(tp) or 0, self._consumer.highwater(tp) or 0)
            lags[(tp.topic, tp.partition)] = max(0, end - self._consumer.position(tp))
        return lags

    def beginning_offset(self, partition: int) -> int | None:
        """Return the oldest offset the broker still has for an input partition (None: unknown)."""
        tp = TopicPartition(self._topic, partition)
        try:
            return self._consumer.beginning_offsets([tp], timeout_ms=OFFSETS_TIMEOUT_MS).get(tp)
        except KafkaError:
            return None

    def topic_id(self) -> str | None:
        """Return the input topic's id from metadata; None when the broker sends none."""
        cluster = getattr(self._consumer._client, "cluster", None)
        topic_id = getattr(cluster, "topic_id", lambda _name: None)(self._topic)
        return None if topic_id is None else str(topic_id)

    def close(self) -> None:
        """Leave the group without committing anything.

        kafka-python calls `on_revoke` once more on close; if that callback fails (its commit is
        refused during a rebalance, say), the error is logged here, not raised: the state it
        tried to commit is durable and the next owner resumes from the last commit.
        """
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("revoke on close failed", extra={"error": repr(exc.__cause__ or exc)})


class Publisher:
    """An asynchronous producer that counts deliveries and failures.

    Args:
        options: from `client_options`.
        kafka: supplies the batching settings.

    Attributes:
        delivered: records the broker acknowledged.
        failed: records that could not be delivered.
    """

    def __init__(
        self,
        options: dict[str, Any],
        kafka: KafkaSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options = options
        self._kafka = kafka
        self._clock = clock
        self._unknown_until: dict[str, float] = {}  # topic -> when to ask the cluster again
        self._producer = self._new_producer()
        # Future callbacks run on the producer's I/O thread.
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self._failed_at_flush = 0
        self._retry: list[tuple] = []  # records to send again at the next flush
        self.truncated = 0  # dead-letter payloads cut to kafka.dead_letter_max_bytes
        self.failed_by_topic: Counter[str] = Counter()
        # (topic, reason) → records dropped because no retry can ever deliver them.
        self.undeliverable: Counter[tuple[str, str]] = Counter()
        self._streaks: set[tuple[str, str]] = set()  # logged once until the topic delivers again

    def _new_producer(self) -> KafkaProducer:
        return KafkaProducer(
            **self._options,
            **RECONNECT_BACKOFF,
            acks="all",
            linger_ms=self._kafka.producer_linger_ms,
            batch_size=self._kafka.producer_batch_bytes,
            # Retry until delivery_timeout_ms; idempotence keeps retries from duplicating.
            retries=float("inf"),
            enable_idempotence=True,
            max_request_size=self._kafka.max_request_size,
            max_block_ms=PRODUCER_MAX_BLOCK_MS,
        )

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record; its outcome shows in the counters, not here.

        A record the producer gives up on (its delivery timeout passed) is kept and sent again
        at the next `flush`, so nothing is dropped silently.
        """
        record = (topic, key, value, headers or [])
        if self._clock() < self._unknown_until.get(topic, 0.0):
            self._drop(UnknownTopicOrPartitionError(topic), record, "unknown_topic")
            return
        try:
            future = self._producer.send(topic, key=key, value=value, headers=record[3])
        except KafkaTimeoutError as exc:
            # send() waited `max_block_ms` for the topic's metadata: a topic the cluster does not
            # know (deleted since start-up) can never take the record, and asking again for
            # every record would stall the loop that long each time.
            if self._topic_unknown(topic):
                self._unknown_until[topic] = self._clock() + UNKNOWN_TOPIC_RECHECK_S
                self._drop(exc, record, "unknown_topic")
            else:
                self._on_failure(exc, record)
            return
        except KafkaError as exc:
            self._on_failure(exc, record)
            return
        future.add_callback(lambda _metadata: self._on_success(topic))
        future.add_errback(lambda exc: self._on_failure(exc, record))

    def send_dead_letter(self, topic: str, raw: RawMessage, reason: str, detail: str) -> None:
        """Forward the original record to the dead-letter topic with why and whence.

        Args:
            topic: the dead-letter topic.
            raw: the record that could not be used; its key and value bytes go out unchanged,
                except that a value over `kafka.dead_letter_max_bytes` is cut to that size
                (header `lstmd-original-bytes` gives the full size; counted in `truncated`), and
                further if key and headers would otherwise not fit `kafka.max_request_size`.
            reason: short machine-readable cause (header `lstmd-reason`).
            detail: human-readable explanation, cut to 1000 UTF-8 bytes (`lstmd-detail`).
        """
        value = raw.value if raw.value is not None else b""
        key = raw.key
        headers = [
            ("lstmd-reason", reason.encode("utf-8")),
            ("lstmd-detail", _truncate_utf8(detail, DEAD_LETTER_DETAIL_MAX_BYTES)),
            ("lstmd-source-topic", raw.topic.encode("utf-8")),
            ("lstmd-source-partition", str(raw.partition).encode("ascii")),
            ("lstmd-source-offset", str(raw.offset).encode("ascii")),
            ("lstmd-source-timestamp-ms", str(raw.timestamp_ms).encode("ascii")),
        ]
        if key is not None and len(key) > DEAD_LETTER_KEY_MAX_BYTES:
            headers.append(("lstmd-original-key-bytes", str(len(key)).encode("ascii")))
            key = key[:DEAD_LETTER_KEY_MAX_BYTES]
        cap = self._dead_letter_cap(key, headers)
        if len(value) > cap:
            headers.append(("lstmd-original-bytes", str(len(value)).encode("ascii")))
            value = value[:cap]
            self.truncated += 1
        self.send(topic, key, value, headers)

    def _dead_letter_cap(self, key: bytes | None, headers: list[tuple[str, bytes]]) -> int:
        """Return the most value bytes a dead letter may carry and still fit one request."""
        # The header that a cut adds is counted up front (20 digits hold any length).
        cut_header = len("lstmd-original-bytes") + 20
        room = (
            self._kafka.max_request_size
            - RECORD_OVERHEAD_BYTES
            - len(key or b"")
            - sum(len(name) + len(value) for name, value in headers)
            - cut_header
        )
        return max(0, min(self._kafka.dead_letter_max_bytes, room))

    def flush(self, timeout_s: float) -> int:
        """Wait for every queued record and return how many failed since the last flush.

        Raises:
            TimeoutError: records were still in flight after `timeout_s`.
        """
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            raise TimeoutError(f"producer flush did not finish in {timeout_s:g} s") from exc
        with self._lock:
            new_failures = self.failed - self._failed_at_flush
            self._failed_at_flush = self.failed
            retry, self._retry = self._retry, []
        if new_failures:
            # An idempotent producer can end in a state it never leaves (a broker that lost its
            # producer ids answers InitProducerId with an error): start over with a new one.
            self._producer.close(timeout=0)
            self._producer = self._new_producer()
        for topic, key, value, headers in retry:
            self.send(topic, key, value, headers)
        return new_failures

    def close(self, timeout_s: float) -> None:
        """Flush what can be flushed within `timeout_s` and release the connection."""
        self._producer.close(timeout=timeout_s)

    def _topic_unknown(self, topic: str) -> bool:
        metadata = getattr(self._producer, "_metadata", None)
        return metadata is not None and metadata.partitions_for_topic(topic) is None

    def _on_success(self, topic: str) -> None:
        with self._lock:
            self.delivered += 1
            ended = {streak for streak in self._streaks if streak[0] == topic}
            self._streaks -= ended
        for topic_, reason in ended:
            log.info("topic accepts records again", extra={"topic": topic_, "reason": reason})

    def _on_failure(self, exc: BaseException, record: tuple | None = None) -> None:
        reason = undeliverable_reason(exc)
        if reason is not None and record is not None:
            self._drop(exc, record, reason)
            return
        with self._lock:
            self.failed += 1
            if record is not None:
                self.failed_by_topic[record[0]] += 1
                self._retry.append(record)

    def _drop(self, exc: BaseException, record: tuple, reason: str) -> None:
        """Count a record no retry can deliver; log the first of each streak only."""
        streak = (record[0], reason)
        with self._lock:
            self.undeliverable[streak] += 1
            first = streak not in self._streaks
            self._streaks.add(streak)
        if first:
            log.error(
                "record can never be delivered; dropped, not retried (further ones counted)",
                extra={
                    "topic": record[0],
                    "reason": reason,
                    "error": type(exc).__name__,
                    "bytes": len(record[2]) + len(record[1] or b""),
                },
            )


def undeliverable_reason(exc: BaseException) -> str | None:
    """Return why a record can never be delivered, or None when retrying may deliver it.

    Too large, an unknown topic, a missing authorisation and every error Kafka marks
    non-retriable are final: retrying them would stall every later commit behind them.
    """
    final = {
        MessageSizeTooLargeError: "too_large",
        RecordListTooLargeError: "too_large",
        UnknownTopicOrPartitionError: "unknown_topic",
        TopicAuthorizationFailedError: "not_authorized",
        ClusterAuthorizationFailedError: "not_authorized",
    }
    for kind, reason in final.items():
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, KafkaError):
        return None if exc.retriable else "non_retriable"
    return "invalid_record"  # the client refused the record itself (a type or value error)


def _truncate_utf8(text: str, max_bytes: int) -> bytes:
    data = text.encode("utf-8", errors="backslashreplace")
    if len(data) <= max_bytes:
        return data
    # Cut on a character boundary so the header stays valid UTF-8.
    return data[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")


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


def committed_offsets(options: dict[str, Any], group_id: str, topic: str) -> dict[int, int]:
    """Return the group's committed offsets for a topic, partition → next offset to read."""
    consumer = KafkaConsumer(**options, group_id=group_id, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        committed = {tp.partition: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close(autocommit=False)
    return {partition: offset for partition, offset in committed.items() if offset is not None}


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
        got = [_raw(record) for records in batch.values() for record in records]
        out.extend(got)
        if got:
            last_new = now
        at_end = all(consumer.position(tp) >= ends.get(tp, 0) for tp in partitions)
        if (at_end and not got) or now - last_new >= idle_s or now - start >= timeout_s:
            return out
