"""The checkpoint rule: flush the producer → write the state → commit the offsets it reflects.

`Checkpoint` owns when a checkpoint is due (steps, interval; revoke and shutdown are asked for by
the loop), the order of its three parts, the backoff after a failure, the retry of a commit that
failed, and the roll-back to the last good snapshot after a divergence. Its collaborators (the
consumer that commits, the producer that flushes, the local `Checkpointer`, the optional state
topic, the metrics) are handed in, in the manner of quix-streams' `checkpointing/checkpoint.py`,
so it is tested with fakes.

Order, and why: every prediction and dead letter for the events before an offset is acknowledged
by the broker before the state that reflects that offset is written, and the state is durable
(local snapshot and, for partitions that changed, the state topic) before the offset is
committed. A committed offset therefore never passes an unanswered event, and whoever owns the
partition next finds a state at least as new as the commit.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_partition
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.partition_state import PartitionState, pack_keys
from daemon.persist.snapshots import SnapshotInfo

log = logging.getLogger("lstmd.checkpoint")

# A graceful stop or a revoke waits this long for the broker to acknowledge what is in flight.
FLUSH_TIMEOUT_S = 30.0
# A periodic checkpoint waits at most this long: a network cut that begins during its flush must
# not hold the loop (and /readyz, which the loop updates) for the whole stop timeout; the
# checkpoint is retried with the usual backoff instead.
PERIODIC_FLUSH_TIMEOUT_S = 5.0
# A periodic checkpoint's state-topic write waits at most this long, chunks and manifests
# together: the loop waits for it, and /healthz calls the loop stalled after `health.stall_s`
# (60 s by default). A revoke or a stop waits FLUSH_TIMEOUT_S.
PERIODIC_STATE_WRITE_TIMEOUT_S = 20.0
# A failing checkpoint (disk full, broker not acknowledging) is retried after 1, 2, 4 ... seconds,
# never less often than this.
SNAPSHOT_RETRY_MAX_S = 60.0
# Reasons that leave partitions behind: supervised events still buffered are answered now.
LEAVING = frozenset({"shutdown", "revoke"})

PartitionKey = tuple[str, int]


class Committer(Protocol):
    """The consumer, as far as a checkpoint needs it."""

    def commit(self, offsets: dict[PartitionKey, int]) -> Any: ...
    def assignment(self) -> set[PartitionKey]: ...
    def seek(self, partition: PartitionKey, offset: int) -> None: ...


class Flusher(Protocol):
    """The producer, as far as a checkpoint needs it."""

    @property
    def failed_by_topic(self) -> Counter[str]: ...

    def flush(self, timeout_s: float) -> int: ...


class StateWriter(Protocol):
    """The state topic (`daemon.edges.state_topic.StateTopic`), as far as writing goes."""

    def write(self, states: Mapping[int, PartitionState], timeout_s: float) -> None: ...


class CheckpointFailed(Exception):
    """One part of a checkpoint failed; the last good state stays in charge."""


class Checkpoint:
    """Decide when to checkpoint, do it in the safe order, back off, retry commits, roll back.

    Args:
        settings: the daemon's settings (snapshot triggers, topics, divergence limit).
        source: commits offsets and seeks after a roll-back.
        publisher: flushed before any state is written.
        checkpointer: writes and rolls back local snapshots.
        learner: the state being checkpointed.
        metrics: `DaemonMetrics`.
        answer: answers what the learner holds (`leaving`: also buffered supervised events) and
            hands the answers to the publisher; returns how many events it answered.
        state_topic: where changed partitions' states go before their offsets are committed;
            None: local snapshots only (one replica, tests).
        restored_offsets: the offsets the restored state reflects.
        clock: monotonic seconds.
        snapshot_meta: extra JSON-able fields for the snapshot (the averaged weights' version).
    """

    def __init__(
        self,
        settings: Any,
        source: Committer,
        publisher: Flusher,
        checkpointer: Checkpointer,
        learner: OnlineLearner,
        metrics: Any,
        answer: Callable[[bool], int],
        state_topic: StateWriter | None = None,
        restored_offsets: Mapping[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        snapshot_meta: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._topic = settings.kafka.input_topic
        self._source = source
        self._publisher = publisher
        self._checkpointer = checkpointer
        self._learner = learner
        self._metrics = metrics
        self._answer = answer
        self._state_topic = state_topic
        self._clock = clock
        self._snapshot_meta = snapshot_meta or dict
        # Input partition → next offset to read; the learner's state reflects everything before.
        self.processed: dict[int, int] = dict(restored_offsets or {})
        self.committed: dict[int, int] = dict(restored_offsets or {})
        # Offsets whose partition state is in the state topic (what a new owner would resume at).
        self.durable: dict[int, int] = {}
        self._saved_offsets = dict(self.processed)
        self._saved_step = learner.step
        # A restored state is already on disk; a fresh one has never been written.
        self._written = bool(restored_offsets)
        self._failure_streak = 0
        self._retry_at = 0.0
        self._commit_failures = 0
        self._seen_failed: Counter[str] = Counter()
        # Set by a roll-back until the next finite step: a divergence then is not rolled back.
        self._rollback_mark: tuple[int, int] | None = None
        # Set by `abandon`: the learner's state is no longer trusted, so nothing is saved or
        # committed again, whoever asks (a revoke fired by closing the consumer, say).
        self.abandoned = False
        # Owned partitions a roll-back found no state for in the snapshot (restored from the
        # state topic, or started empty, since it was written): the loop restores them again.
        self.lost_in_rollback: set[int] = set()
        self.last = clock()

    def abandon(self) -> None:
        """Stop every later save and commit: the state may hold a half-applied event or step.

        Called before the consumer is closed on an abort: kafka-python's close fires the revoke
        callback, which would otherwise snapshot, write the state topic and commit the state
        the abort means to throw away. The restart resumes from the last durable state.
        """
        self.abandoned = True

    # ---- partitions ---------------------------------------------------------------------

    def adopt(self, partition: int, offset: int, durable: bool) -> None:
        """Take a partition whose state reflects `offset` (restored, or started empty there)."""
        self.processed[partition] = offset
        self.committed.pop(partition, None)  # unknown: the next checkpoint commits it
        if durable:
            self.durable[partition] = offset

    def forget(self, partitions: Iterable[int]) -> None:
        """Stop checkpointing partitions that moved away (their store was dropped)."""
        for partition in partitions:
            for offsets in (self.processed, self.committed, self.durable, self._saved_offsets):
                offsets.pop(partition, None)

    def state_topic_lag(self) -> dict[int, int]:
        """Return per partition the records processed since its state last reached Kafka."""
        return {p: o - self.durable.get(p, o) for p, o in self.processed.items()}

    # ---- triggers -----------------------------------------------------------------------

    def maybe_save(self, connected: bool) -> None:
        """Checkpoint when `every_steps` steps or `every_s` seconds (with changes) have passed."""
        config = self._settings.snapshot
        now = self._clock()
        if self.abandoned:
            return
        if now < self._retry_at:
            return  # backing off after a failure
        if self._learner.consecutive_nonfinite:
            return  # a diverging model is not a good state to come back to
        if not connected:
            return  # nothing can be acknowledged or committed; the checkpoint would only wait
        steps = self._learner.step - self._saved_step
        changed = steps > 0 or self.processed != self._saved_offsets
        if config.every_steps and steps >= config.every_steps:
            self.save("steps")
        elif config.every_s and changed and now - self.last >= config.every_s:
            self.save("interval")

    def retry_commit(self) -> None:
        """Retry a commit that failed (called when idle); nothing to do otherwise."""
        if self._commit_failures and not self.abandoned:
            self._commit(self._saved_offsets)

    # ---- the checkpoint -----------------------------------------------------------------

    def save(self, reason: str) -> bool:
        """Flush, write the state, commit the offsets it reflects.

        A failure (records not acknowledged, a disk fault, the state topic refusing) keeps the
        daemon running and the last good state in charge; the checkpoint is retried with a
        backoff, and nothing is committed.

        Args:
            reason: "steps", "interval", "revoke" or "shutdown".

        Returns:
            Whether the state was written (and the commit attempted); never after `abandon`.
        """
        if self.abandoned:
            log.warning("checkpoint refused: the state was abandoned", extra={"reason": reason})
            return False
        self.last = self._clock()
        leaving = reason in LEAVING
        try:
            answered = self._answer(leaving)
            self._flush(FLUSH_TIMEOUT_S if leaving else PERIODIC_FLUSH_TIMEOUT_S)
            unchanged = (
                self._learner.step == self._saved_step
                and self.processed == self._saved_offsets
                and not answered
            )
            if not (unchanged and self._written):
                self._write(reason)
            if answered:
                self.durable.clear()  # answered flags changed: the next owner must see them
            self._write_state_topic(FLUSH_TIMEOUT_S if leaving else PERIODIC_STATE_WRITE_TIMEOUT_S)
        except CheckpointFailed as exc:
            self._failed(reason, str(exc))
            return False
        self._commit(self._saved_offsets)
        return True

    def _flush(self, timeout_s: float) -> None:
        try:
            failures = self._publisher.flush(timeout_s)
        except TimeoutError as exc:
            raise CheckpointFailed(str(exc)) from None
        if failures:
            self._count_failed_deliveries()
            raise CheckpointFailed(f"{failures} records not acknowledged by the broker")

    def _write(self, reason: str) -> None:
        started = time.perf_counter()
        try:
            info = self._checkpointer.save(dict(self.processed), self._snapshot_meta())
        except OSError as exc:
            self._metrics.snapshot_failures.inc()
            raise CheckpointFailed(f"cannot write snapshot: {exc}") from None
        seconds = time.perf_counter() - started
        self._metrics.snapshot_duration.observe(seconds)
        self._metrics.snapshot_last_success.set(time.time())
        self._written_at(info)
        log.info(
            "snapshot written",
            extra={
                "reason": reason,
                "snapshot": info.snapshot_id,
                "step": info.step,
                "offsets": info.offsets,
                "seconds": round(seconds, 3),
            },
        )

    def _written_at(self, info: SnapshotInfo) -> None:
        self._saved_step = info.step
        self._saved_offsets = dict(info.offsets)
        self._written = True
        if self._failure_streak:
            log.info("snapshots recovered", extra={"after_failures": self._failure_streak})
        self._failure_streak = 0
        self._retry_at = 0.0

    def _write_state_topic(self, timeout_s: float) -> None:
        """Put every partition whose offset moved since its last write into the state topic."""
        if self._state_topic is None:
            return
        changed = {p: o for p, o in self._saved_offsets.items() if self.durable.get(p) != o}
        if not changed:
            return
        states = {}
        for partition, offset in changed.items():
            self._learner.store(partition)  # a partition of dead letters only has an empty store
            packed = pack_keys(*export_partition(self._learner, partition))
            states[partition] = PartitionState(offset, packed.arrays, packed.meta)
        started = time.perf_counter()
        try:
            self._state_topic.write(states, timeout_s)
        except (RuntimeError, TimeoutError, OSError) as exc:  # the edge translates client errors
            raise CheckpointFailed(f"state topic write failed: {exc}") from None
        self.durable.update(changed)
        self._metrics.set_state_topic_lag(self.state_topic_lag())
        log.debug(
            "partition states written to the state topic",
            extra={"offsets": changed, "seconds": round(time.perf_counter() - started, 3)},
        )

    def _count_failed_deliveries(self) -> None:
        failed = self._publisher.failed_by_topic
        kafka = self._settings.kafka
        for topic, metric in (
            (kafka.predictions_topic, self._metrics.predictions_failed),
            (kafka.dead_letter_topic, self._metrics.dead_letters_failed),
        ):
            metric.inc(failed[topic] - self._seen_failed[topic])
            self._seen_failed[topic] = failed[topic]

    def _failed(self, reason: str, problem: str) -> None:
        """Back off (1 s, 2 s, ... capped) and log the first failure of a streak only."""
        self._failure_streak += 1
        delay = min(SNAPSHOT_RETRY_MAX_S, 2.0 ** (self._failure_streak - 1))
        self._retry_at = self._clock() + delay
        if self._failure_streak == 1:
            log.error(
                "snapshot failed; retrying with backoff, last good snapshot kept",
                extra={"reason": reason, "problem": problem},
            )

    def _commit(self, offsets: Mapping[int, int]) -> None:
        """Commit what changed and is durable; a failure is retried later (idle, next, exit)."""
        if self.abandoned:
            return
        durable = offsets if self._state_topic is None else self.durable
        changed = {
            p: o for p, o in offsets.items() if self.committed.get(p) != o and durable.get(p) == o
        }
        if not changed:
            return
        try:
            self._source.commit({(self._topic, p): o for p, o in changed.items()})
        except Exception as exc:  # the state is durable; only the commit must be done again
            self._commit_failures += 1
            self._metrics.commit_failures.inc()
            if self._commit_failures == 1:
                log.warning(
                    "offset commit failed; retrying at the next snapshot, when idle and at exit",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
            return
        if self._commit_failures:
            log.info("offset commit recovered", extra={"after_failures": self._commit_failures})
        self._commit_failures = 0
        self.committed.update(changed)

    # ---- divergence ---------------------------------------------------------------------

    def after_divergence_check(self) -> bool:
        """Roll back after `max_nonfinite_steps` non-finite steps, but never twice in a row.

        A divergence that recurs after a roll-back, before any finite step, would replay the
        same events into the same divergence forever; those batches are skipped instead: the
        learner has answered their events and counted them untrained, and the weights were not
        updated.

        Returns:
            Whether the learner was rolled back (its counters went back).
        """
        learner = self._learner
        if self._rollback_mark is not None and self._finite_step_since_rollback(
            self._rollback_mark
        ):
            self._rollback_mark = None
        if learner.consecutive_nonfinite < self._settings.model.max_nonfinite_steps:
            return False
        if self._rollback_mark is None:
            return self._rollback()
        self._skip_diverged(learner.consecutive_nonfinite)
        return False

    def _finite_step_since_rollback(self, mark: tuple[int, int]) -> bool:
        step, nonfinite = mark
        learner = self._learner
        return learner.step - step > learner.nonfinite_losses - nonfinite

    def _skip_diverged(self, steps: int) -> None:
        offsets = self._learner.nonfinite_offsets
        shown = list(offsets)
        offsets.clear()
        self._metrics.diverged_batches_skipped.inc(steps)
        log.warning(
            "training diverged again right after a rollback; batches skipped, events untrained",
            extra={"nonfinite_steps": steps, "offsets": shown},
        )
        self._learner.consecutive_nonfinite = 0  # weights were not updated: a good state

    def _rollback(self) -> bool:
        """Go back to the last good snapshot after repeated non-finite steps, and replay."""
        skipped = self._learner.consecutive_nonfinite
        info = self._checkpointer.rollback()
        if info is None:
            log.error("training diverged and there is no snapshot to roll back to")
            self._learner.consecutive_nonfinite = 0
            return False
        self._metrics.rollbacks.inc()
        self._rollback_mark = (self._learner.step, self._learner.nonfinite_losses)
        owned = {p for _, p in self._source.assignment()}
        for partition in set(self._learner.stores) - owned:
            self._learner.drop_partition(partition)  # moved away since that snapshot
        self.processed = {p: o for p, o in info.offsets.items() if p in owned}
        self.lost_in_rollback = owned - set(self.processed)
        for partition in self.lost_in_rollback:
            self.durable.pop(partition, None)
            self.committed.pop(partition, None)
        self._written_at(info)
        self._saved_offsets = dict(self.processed)
        for partition, offset in self.processed.items():
            self._source.seek((self._topic, partition), offset)
        log.warning(
            "training diverged; rolled back to the last good snapshot",
            extra={"snapshot": info.snapshot_id, "step": info.step, "nonfinite_steps": skipped},
        )
        return True
