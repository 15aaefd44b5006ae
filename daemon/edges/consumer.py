"""The input consumer: a group member that commits only what it is told to.

Notes measured against the embedded Tansu 0.6.0 broker:

* A consumer-group join (first assignment of a fresh consumer) takes ~3.0 s with
  session_timeout_ms=6000 and heartbeat_interval_ms=1000, consistently; it is the broker's
  join delay, not the session timeout.
* ListOffsets(latest), i.e. `end_offsets()`, reports the last *batch's* base offset + 1, not
  the last record's offset + 1. Fetch responses carry the correct high watermark, so lag uses
  the larger of the two and is clamped at zero.
* Committing an offset inside a batch works: a new group member resumes at that exact record.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from daemon.edges.connection import RECONNECT_BACKOFF
from daemon.edges.messages import PartitionKey, RawMessage, raw_message
from daemon.settings import KafkaSettings

log = logging.getLogger("lstmd.kafka")

PartitionCallback = Callable[[set[PartitionKey]], None]

# Offset look-ups (lag, retention checks) run on the loop's thread: during a network cut
# kafka-python would wait out its whole request timeout (30 s), holding the loop and /readyz.
OFFSETS_TIMEOUT_MS = 1000
# A commit waits at most this long (kafka-python's default waits without end): a commit during
# a network cut must not hold the loop past `health.stall_s`; a failed one is retried.
COMMIT_TIMEOUT_MS = 10_000
# How often the IO loop checks whether a rebalance callback's worker thread is done. Short
# against a join's seconds; the loop serves heartbeats and commits in between.
REBALANCE_CALLBACK_POLL_S = 0.01
# The early join's poll: how long `attach` may wait for the joining thread to notice it is done.
JOIN_POLL_MS = 50


def _keys(partitions: Iterable[TopicPartition]) -> set[PartitionKey]:
    return {(tp.topic, tp.partition) for tp in partitions}


@dataclass(frozen=True)
class _Callbacks:
    on_assign: PartitionCallback | None = None
    on_revoke: PartitionCallback | None = None
    on_lost: PartitionCallback | None = None


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

    def __init__(self, net: Any, callbacks: _Callbacks, counts: Counter[str]) -> None:
        self._net = net
        # Read at each call: `EventSource.attach` replaces the early join's holding callbacks.
        self.callbacks = callbacks
        self._counts = counts

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        keys = _keys(revoked)
        if keys:
            self._counts["revoked"] += 1
        await self._off_loop(self.callbacks.on_revoke, keys)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._counts["assigned"] += 1
        await self._off_loop(self.callbacks.on_assign, _keys(assigned))

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        # Not a revoke: the group already gave these away, so nothing may be committed for them.
        self._counts["lost"] += 1
        log.warning("partitions lost", extra={"partitions": sorted(p for _, p in _keys(lost))})
        await self._off_loop(self.callbacks.on_lost, _keys(lost))

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
        self._options = options
        self._auto_offset_reset = kafka.auto_offset_reset
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
        callbacks = _Callbacks(on_assign, on_revoke, on_lost)
        self._listener = _Listener(self._consumer._net, callbacks, self._counts)
        self._consumer.subscribe([kafka.input_topic], listener=self._listener)
        self._joining: threading.Thread | None = None
        self._join_done = threading.Event()
        # The early join's assignment, paused until `poll` hands it to `on_assign`; None when
        # no assignment is waiting.
        self._held: set[PartitionKey] | None = None

    # ---- the early join ---------------------------------------------------------------------

    def join_early(self) -> None:
        """Start joining the group on a thread while the caller builds what `on_assign` needs.

        A first join waits seconds at the coordinator (~3 s on Tansu; Kafka's
        `group.initial.rebalance.delay.ms` is 3 s by default), which the daemon spends loading
        TensorFlow instead. Until `attach`, an assignment is paused and held, not consumed:
        the first `poll` after `attach` hands it to `on_assign`, as a join inside that poll
        would have, and only then resumes fetching.
        """
        holding = _Callbacks(self._hold, self._release, self._release)
        self._listener.callbacks = holding
        self._joining = threading.Thread(target=self._join, name="lstmd-join", daemon=True)
        self._joining.start()

    def attach(
        self,
        *,
        on_assign: PartitionCallback | None = None,
        on_revoke: PartitionCallback | None = None,
        on_lost: PartitionCallback | None = None,
    ) -> None:
        """Stop the early join and install the callbacks; a held assignment waits for `poll`."""
        self._stop_joining()
        self._listener.callbacks = _Callbacks(on_assign, on_revoke, on_lost)

    def _join(self) -> None:
        try:
            while not self._join_done.is_set() and self._held is None:
                batches = self._consumer.poll(timeout_ms=JOIN_POLL_MS)
                for tp, records in batches.items():  # held partitions are paused: not expected
                    self._consumer.seek(tp, records[0].offset)
        except Exception as exc:  # the loop's own polls join again and report what fails
            log.info("early group join stopped", extra={"error": repr(exc)})

    def _stop_joining(self) -> None:
        self._join_done.set()
        if self._joining is not None:
            self._joining.join()
            self._joining = None

    def _hold(self, partitions: set[PartitionKey]) -> None:
        # Eager protocol: each assignment is the whole set.
        self._consumer.pause(*(TopicPartition(*key) for key in partitions))
        self._held = set(partitions)

    def _release(self, partitions: set[PartitionKey]) -> None:
        if self._held is not None:
            self._held -= partitions

    def _hand_over_held(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        on_assign = self._listener.callbacks.on_assign
        if on_assign is not None:
            on_assign(held)
        self._consumer.resume(*(TopicPartition(*key) for key in held))

    # ---- the loop's calls ---------------------------------------------------------------------

    @property
    def rebalances(self) -> int:
        """Return how many group joins completed after this member's first one."""
        return max(0, self._counts["assigned"] - 1)

    def poll(self, timeout_ms: int) -> list[RawMessage]:
        """Return the next records, flattened, in order within each partition."""
        if self._joining is not None:
            raise RuntimeError("poll during the early join: call attach first")
        self._hand_over_held()
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        return [raw_message(record) for records in batches.values() for record in records]

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
            },
            timeout_ms=COMMIT_TIMEOUT_MS,
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

    def committed_offset(self, partition: int) -> int | None:
        """Return the group's committed offset of an input partition, or where a partition with
        none starts (`auto_offset_reset`); None when the broker does not answer."""
        tp = TopicPartition(self._topic, partition)
        try:
            committed = self._consumer.committed(tp)
            if committed is not None:
                return int(committed)
            start = (
                self._consumer.beginning_offsets
                if self._auto_offset_reset == "earliest"
                else self._consumer.end_offsets
            )
            return start([tp], timeout_ms=OFFSETS_TIMEOUT_MS).get(tp)
        except KafkaError:
            return None

    def offset_reachable(self, partition: int, offset: int) -> bool:
        """Say whether an input partition has ever held records up to `offset` (exclusive).

        A restored state's offset past the partition's end would seek beyond every record, and
        the events that come there later would be skipped up to it. Tansu's end offsets may
        trail the last batch (see the module notes), so an offset past them is checked by
        fetching the record before it. A broker that does not answer in time is given the
        benefit of the doubt: this guards against hostile records, not a slow cluster.
        """
        tp = TopicPartition(self._topic, partition)
        try:
            end = self._consumer.end_offsets([tp], timeout_ms=OFFSETS_TIMEOUT_MS).get(tp)
        except KafkaError:
            return True
        if end is None or offset <= end:
            return True
        probe = KafkaConsumer(**self._options, group_id=None, enable_auto_commit=False)
        try:
            probe.assign([tp])
            probe.seek(tp, offset - 1)
            records = probe.poll(timeout_ms=OFFSETS_TIMEOUT_MS).get(tp, [])
            return any(record.offset >= offset - 1 for record in records)
        except KafkaError:
            return True
        finally:
            probe.close(autocommit=False)

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
        self._stop_joining()
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("revoke on close failed", extra={"error": repr(exc.__cause__ or exc)})
