"""Partition moves: what a replica does when the consumer group gives or takes partitions.

Revoke: checkpoint (answer what is pending, flush, write the partitions' states to the state
topic, commit). The revoked stores stay in memory until the assignment that follows says which
partitions stay here: kafka-python's assignors are eager, so every rebalance revokes everything,
and re-reading a partition this replica keeps would only cost restore time. Partitions that went
elsewhere are dropped before any record is processed. A revoke whose checkpoint failed drops its
partitions at once: their memory is ahead of what the next owner will find.

Assign: for each partition this replica did not just hold, the newest of (the local snapshot's
state, the state topic's state) wins; the consumer seeks to its offset. With neither, the
partition starts empty at the committed offset. One log line per partition says which.

Lost (this member's session expired): drop without committing; the group gave them away.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import numpy as np

from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_partition, import_partition
from daemon.core.state_check import Layout, check_partition_state, layout_of
from daemon.core.untrusted import UntrustedRecord
from daemon.persist.checkpoint import Checkpoint
from daemon.persist.partition_state import PartitionState, unpack_keys
from daemon.service.metrics import DaemonMetrics

log = logging.getLogger("lstmd.partitions")

PartitionKey = tuple[str, int]


class StateReader(Protocol):
    """The state topic (`daemon.edges.state_topic.StateTopic`), as far as reading goes."""

    def read(self, partitions: Iterable[int]) -> dict[int, PartitionState]: ...


class Seeker(Protocol):
    def seek(self, partition: PartitionKey, offset: int) -> None: ...
    def assignment(self) -> set[PartitionKey]: ...


def state_digest(learner: OnlineLearner, partition: int) -> str:
    """Return a short digest of a partition's keys and LSTM states, independent of row order.

    Logged by the writer and by the restorer, so a test (or an operator) can check that the
    state a new owner restored is the one the old owner had at that offset.
    """
    if partition not in learner.stores:
        return "empty"
    arrays, meta = export_partition(learner, partition)
    keys = list(meta["keys"])
    order: list[int] = np.argsort(np.array(keys, dtype=object), kind="stable").tolist()
    digest = hashlib.sha256()
    for index in order:
        digest.update(keys[index].encode("utf-8") + b"\0")
        digest.update(np.ascontiguousarray(arrays["states"][index]).tobytes())
    digest.update(str(len(arrays["ev_key"])).encode())
    return digest.hexdigest()[:16]


class PartitionMoves:
    """Carry key-state stores in and out of this replica on rebalances.

    Args:
        topic: the input topic.
        source: seeks assigned partitions.
        learner: holds one store per partition.
        checkpoint: makes revoked partitions durable and tracks offsets.
        metrics: `DaemonMetrics`.
        state_topic: where partition states come from; None: local snapshots only.
        clock: monotonic seconds (restore timestamps).
    """

    def __init__(
        self,
        topic: str,
        source: Seeker,
        learner: OnlineLearner,
        checkpoint: Checkpoint,
        metrics: DaemonMetrics,
        state_topic: StateReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topic = topic
        self._source = source
        self._learner = learner
        self._checkpoint = checkpoint
        self._metrics = metrics
        self._state_topic = state_topic
        self._clock = clock
        self._held: set[int] = set()  # revoked, made durable, kept until the next assignment
        # Partition → offset its first record after (re)assignment should have.
        self.expected_first: dict[int, int] = {}
        # The input topic's id as the broker reports it; `expected_topic_id` is the one the
        # restored state was built on (set by whoever restores it), so a recreated topic shows.
        self.topic_id: str | None = None
        self.expected_topic_id: str | None = None
        self._state_layout: Layout | None = None

    def on_revoke(self, partitions: set[PartitionKey]) -> None:
        """Make the revoked partitions durable and committed; keep them until the assignment."""
        revoked = {p for _, p in partitions}
        if not revoked:
            return
        log.info("partitions revoked", extra={"partitions": sorted(revoked)})
        if self._checkpoint.save("revoke"):
            self._held |= revoked
            for partition in sorted(revoked):
                offset = self._checkpoint.processed.get(partition)
                log.info(
                    "partition state handed over",
                    extra={
                        "partition": partition,
                        "offset": offset,
                        "digest": state_digest(self._learner, partition),
                    },
                )
        else:
            self._drop(revoked)

    def on_lost(self, partitions: set[PartitionKey]) -> None:
        """Drop partitions the group took without a revoke; commit nothing for them."""
        self._drop({p for _, p in partitions})

    def on_assign(self, partitions: set[PartitionKey]) -> None:
        """Drop what moved away, restore what is new here, seek each to its state's offset."""
        assigned = {p for _, p in partitions}
        self._metrics.owned_partitions.set(len(assigned))
        held = set(self._learner.stores) | set(self._checkpoint.processed)
        self._drop(held - assigned)
        kept = self._held & assigned
        self._held = set()
        fresh = sorted(assigned - kept)
        found = self._state_topic.read(fresh) if self._state_topic and fresh else {}
        for partition in fresh:
            self._restore(partition, found.get(partition))
        for partition in sorted(assigned):
            offset = self._checkpoint.processed.get(partition)
            if offset is not None:
                self._source.seek((self._topic, partition), offset)
                self.expected_first[partition] = offset
        self._check_topic_identity()

    def _check_topic_identity(self) -> None:
        """Warn once when the input topic's id differs from the one the state was built on."""
        observed = getattr(self._source, "topic_id", lambda: None)()
        if observed is None or observed == self.topic_id:
            return
        self.topic_id = observed
        if self.expected_topic_id is not None and observed != self.expected_topic_id:
            self._metrics.topic_changed.inc()
            log.warning(
                "input topic was recreated since the state was built; its offsets are new",
                extra={"expected_topic_id": self.expected_topic_id, "topic_id": observed},
            )

    def restore_after_rollback(self, partitions: set[int]) -> None:
        """Restore partitions a roll-back had no snapshot of, as on a fresh assignment.

        They joined after the snapshot rolled back to (restored from the state topic, or
        started empty): their stores went with the roll-back, and the consumer is past where
        their state would resume. The state topic's state wins; with none, the partition
        starts empty at the group's committed offset. Either way the consumer seeks there.
        """
        if not partitions:
            return
        fresh = sorted(partitions)
        found = self._state_topic.read(fresh) if self._state_topic else {}
        for partition in fresh:
            self._restore(partition, found.get(partition))
            offset = self._checkpoint.processed.get(partition)
            if offset is None:
                offset = getattr(self._source, "committed_offset", lambda _p: None)(partition)
            if offset is not None:
                self._source.seek((self._topic, partition), offset)
                self.expected_first[partition] = offset
            log.warning(
                "partition restored again after a roll-back",
                extra={"partition": partition, "offset": offset},
            )

    def check_first_offset(self, partition: int, offset: int) -> None:
        """Warn once when a partition resumes elsewhere than the offset its state reflects."""
        expected = self.expected_first.pop(partition)
        if offset == expected:
            return
        if offset > expected:
            # Gaps (transaction markers, compaction) are normal; deleted records are not.
            beginning = getattr(self._source, "beginning_offset", lambda _p: None)(partition)
            if beginning is None or beginning <= expected:
                return
            cause = "records deleted by retention before they were read"
        else:
            cause = "the topic was recreated or truncated"
        self._metrics.offsets_missing.labels(partition=str(partition)).inc()
        log.warning(
            "input offset the state reflects is gone from the broker",
            extra={"partition": partition, "expected": expected, "actual": offset, "cause": cause},
        )

    def _import(self, partition: int, state: PartitionState) -> bool:
        """Load a partition's state from the state topic whole, or skip it with a warning.

        The state topic is untrusted input (DESIGN §11): the arrays are checked against this
        learner's layout, the partition and the input partition's offsets first.

        Returns:
            Whether it was imported; if not, the partition's store (a local one included) is
            dropped: a newer state exists, so the group's committed offset is where to resume.
        """
        try:
            arrays, meta = unpack_keys(state)
            check_partition_state(arrays, meta, self._layout(), partition)
            if not getattr(self._source, "offset_reachable", lambda _p, _o: True)(
                partition, state.offset
            ):
                raise UntrustedRecord(
                    "offset_out_of_range", f"offset {state.offset} is past the partition's end"
                )
        except UntrustedRecord as exc:
            self._learner.drop_partition(partition)
            self._metrics.reject_internal("state", exc.reason, f"partition {partition}: {exc}")
            return False
        self._learner.drop_partition(partition)
        try:
            import_partition(self._learner, arrays, meta, self._clock())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            # What the checks above did not foresee: never half-loaded, never a crash.
            self._learner.drop_partition(partition)
            self._metrics.reject_internal(
                "state", "cannot_import", f"partition {partition}: {exc!r}"
            )
            return False
        return True

    def _layout(self) -> Layout:
        if self._state_layout is None:
            self._state_layout = layout_of(self._learner)
        return self._state_layout

    def _restore(self, partition: int, state: PartitionState | None) -> None:
        local = self._checkpoint.processed.get(partition)
        started = time.perf_counter()
        imported = None
        if state is not None and (local is None or state.offset > local):
            imported = self._import(partition, state)
            if not imported:
                # The local state was dropped for the import: start empty where the group's
                # committed offset says, not from the older local offset (its records were
                # answered already).
                self._checkpoint.forget([partition])
                local = None
        if imported and state is not None:
            seconds = time.perf_counter() - started
            self._metrics.partition_restore_duration.observe(seconds)
            self._checkpoint.adopt(partition, state.offset, durable=True)
            origin, offset = "state topic", state.offset
        elif local is not None:
            durable = state is not None and state.offset == local
            self._checkpoint.adopt(partition, local, durable=durable)
            origin, offset, seconds = "local snapshot", local, 0.0
        else:
            origin, offset, seconds = "empty at the committed offset", None, 0.0
        log.info(
            "partition assigned",
            extra={
                "partition": partition,
                "restored_from": origin,
                "offset": offset,
                "keys": len(self._learner.stores.get(partition, ())),
                "seconds": round(seconds, 3),
                "digest": state_digest(self._learner, partition),
            },
        )

    def _drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._learner.drop_partition(partition)
            self.expected_first.pop(partition, None)
        self._checkpoint.forget(partitions)
        self._held -= partitions

    def lag(self) -> Mapping[int, int]:
        """Return per owned partition the records processed since its state reached Kafka."""
        return self._checkpoint.state_topic_lag()
