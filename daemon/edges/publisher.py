"""The producer of predictions, dead letters and metrics: asynchronous, counting every outcome."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from kafka import KafkaProducer
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from kafka.structs import TopicPartition

from daemon.edges.connection import RECONNECT_BACKOFF
from daemon.edges.messages import RawMessage
from daemon.edges.partitioner import KeyHashPartitioner
from daemon.settings import KafkaSettings

log = logging.getLogger("lstmd.kafka")

DEAD_LETTER_DETAIL_MAX_BYTES = 1000
# A dead letter's key is the source record's key, which may be as large as a whole message; cut
# it so that headers, key and value always fit one request (header `lstmd-original-key-bytes`).
DEAD_LETTER_KEY_MAX_BYTES = 1024
# Room a record needs beyond key, value and headers inside one produce request: the record batch
# header (61 B), the record's varints and attributes, per-header lengths; 512 B is ample.
RECORD_OVERHEAD_BYTES = 512
# send() blocks at most this long for a topic's metadata (kafka-python's default is 60 s): a topic
# deleted under a running daemon then stalls the loop 10 s, once per UNKNOWN_TOPIC_RECHECK_S, and
# its records are dropped as undeliverable in between.
PRODUCER_MAX_BLOCK_MS = 10_000
UNKNOWN_TOPIC_RECHECK_S = 30.0
# A record's outcome is read from its future in bulk (at `flush`, or once this many records are
# in flight) rather than by two callbacks per record on the producer's I/O thread: those made
# lstmd's send about 1.35x a bare producer's and took the GIL from the loop for every record.
# 10,000 records' futures hold ~3 MB; a poll's records are far fewer.
SETTLE_EVERY_RECORDS = 10_000


class Publisher:
    """An asynchronous producer that counts deliveries and failures.

    Outcomes are counted when the records' futures are settled: at every `flush` (and `close`),
    and whenever `SETTLE_EVERY_RECORDS` records are in flight. Between those, `delivered`,
    `failed` and `undeliverable` lag behind what the broker answered; every one is counted by
    the time `flush` returns.

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
        self._partitioner = KeyHashPartitioner()
        self._partitions: dict[tuple[str, int], TopicPartition] = {}
        self._producer = self._new_producer()
        self._appender = _Appender.of(self._producer)
        # Sent records whose outcome is not counted yet: (future, (topic, key, value, headers)).
        self._in_flight: list[tuple[Any, tuple]] = []
        self._settle_at = SETTLE_EVERY_RECORDS
        # Outcomes are counted on the caller's thread, which may be a rebalance worker while the
        # loop waits in poll; the lock keeps the counters whole if both ever overlap.
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
            partitioner=self._partitioner,
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
            future = None
            if key is not None and not headers:
                future = self._append(topic, key, value)
            if future is None:
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
        self._in_flight.append((future, record))
        if len(self._in_flight) >= self._settle_at:
            self._settle()

    def push(self) -> None:
        """Nothing to do: `send` puts each record into the producer's batches at once."""

    def _append(self, topic: str, key: bytes, value: bytes) -> Any:
        """Put a keyed record without headers straight into the producer's batches.

        What `KafkaProducer.send` does for such a record, less the checks that cannot fail
        for one (types, headers, serializers, transactions, sticky partitioning): its Python
        took about a third of lstmd's CPU per prediction sent (`bench/end_to_end.py`). The
        record lands in the same batch, on the same partition, with the same future.

        Returns:
            The record's future; None when `send` must decide (a topic whose metadata is not
            known yet, a record near the size limit, a producer without these internals).
        """
        appender = self._appender
        if appender is None:
            return None
        partition = self._partitioner.keyed(topic, key, appender.metadata)
        if partition is None:
            return None
        if len(key) + len(value) + RECORD_OVERHEAD_BYTES > self._kafka.max_request_size:
            return None  # send() raises MessageSizeTooLargeError, counted as too_large
        tp = self._partitions.get((topic, partition))
        if tp is None:
            tp = self._partitions[(topic, partition)] = TopicPartition(topic, partition)
        future, batch_is_full, new_batch, _ = appender.accumulator.append(tp, None, key, value, [])
        if batch_is_full or new_batch:
            appender.sender.wakeup()
        return future

    def _settle(self) -> None:
        """Count the outcomes of records whose futures are done; keep the others in flight."""
        pending: list[tuple[Any, tuple]] = []
        delivered: Counter[str] = Counter()
        for future, record in self._in_flight:
            if not future.is_done:
                pending.append((future, record))
            elif future.exception is None:
                delivered[record[0]] += 1
            else:
                self._on_failure(future.exception, record)
        self._in_flight = pending
        # Records stuck in flight (a broker outage) must not make every send walk them again.
        self._settle_at = max(SETTLE_EVERY_RECORDS, 2 * len(pending))
        for topic, count in delivered.items():
            self._on_success(topic, count)

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
        self._settle()
        with self._lock:
            new_failures = self.failed - self._failed_at_flush
            self._failed_at_flush = self.failed
            retry, self._retry = self._retry, []
        if new_failures:
            # An idempotent producer can end in a state it never leaves (a broker that lost its
            # producer ids answers InitProducerId with an error): start over with a new one.
            self._producer.close(timeout=0)
            self._producer = self._new_producer()
            self._appender = _Appender.of(self._producer)
        for topic, key, value, headers in retry:
            self.send(topic, key, value, headers)
        return new_failures

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what can be flushed within `timeout_s` and release the connection (again: a
        no-op)."""
        self._producer.close(timeout=timeout_s)
        self._settle()

    def _topic_unknown(self, topic: str) -> bool:
        metadata = getattr(self._producer, "_metadata", None)
        return metadata is not None and metadata.partitions_for_topic(topic) is None

    def _on_success(self, topic: str, count: int) -> None:
        with self._lock:
            self.delivered += count
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


class _Appender(NamedTuple):
    """The parts of a kafka-python 3.0 producer that `Publisher._append` drives directly."""

    metadata: Any  # ClusterMetadata
    accumulator: Any  # RecordAccumulator
    sender: Any  # Sender

    @classmethod
    def of(cls, producer: Any) -> _Appender | None:
        """Return a producer's parts; None when it lacks them (another version, a test double)."""
        parts = [getattr(producer, name, None) for name in ("_metadata", "_accumulator", "_sender")]
        if any(part is None for part in parts):
            return None
        # Idempotence runs through a transaction manager too; only transactions need `send`.
        transactions = getattr(producer, "_transaction_manager", None)
        if transactions is not None and transactions.is_transactional():
            return None
        return cls(*parts)


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
