"""The daemon loop: poll → decode → learn → publish → commit, with its collaborators injected.

The runner owns no model logic and imports no client library: the event source, the publisher,
the learner and the metrics are handed in, so tests can drive it against the real broker or
against fakes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.core.events import Event, Reason, Rejection, decode_event
from daemon.core.learner import OnlineLearner, TrainStepFailed
from daemon.core.records import encode_metrics, encode_prediction
from daemon.persist.checkpointing import Checkpointer
from daemon.service.health import Health
from daemon.service.learning_metrics import LearningRecorder
from daemon.service.metrics import DaemonMetrics
from daemon.settings import Settings

log = logging.getLogger("lstmd.runner")

# Consumer lag asks the broker for end offsets; a few seconds is fresh enough for a gauge.
LAG_INTERVAL_S = 5.0
# A graceful stop waits this long for the broker to acknowledge what is in flight.
FLUSH_TIMEOUT_S = 30.0
# A periodic snapshot waits at most this long: a network cut that begins during its flush must
# not hold the loop (and /readyz, which the loop updates) for the whole stop timeout; the
# snapshot is retried with the usual backoff instead.
PERIODIC_FLUSH_TIMEOUT_S = 5.0
# A failing snapshot (disk full, broker not acknowledging) is retried after 1, 2, 4 ... seconds,
# never less often than this.
SNAPSHOT_RETRY_MAX_S = 60.0
# Progress summary at INFO: one line this often, never one per message.
SUMMARY_INTERVAL_S = 60.0
# Room a record needs beyond its key and value inside one produce request: the record batch
# header (61 B), the record's own varints and attributes (< 25 B) and slack for the topic name.
RECORD_OVERHEAD_BYTES = 512

PartitionKey = tuple[str, int]


class Source(Protocol):
    def poll(self, timeout_ms: int) -> list[Any]: ...
    def commit(self, offsets: dict[PartitionKey, int]) -> None: ...
    def assignment(self) -> set[PartitionKey]: ...
    def seek(self, partition: PartitionKey, offset: int) -> None: ...
    def lag(self) -> dict[PartitionKey, int]: ...
    def connected(self) -> bool: ...
    def close(self) -> None: ...


class StateUntrusted(RuntimeError):
    """The learner's state can no longer be trusted: exit without snapshot or commit."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """Where an answer comes from, for a dead letter made after the input record is gone."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    timestamp_ms: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()


class Sink(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None: ...
    def send_dead_letter(self, topic: str, raw: Any, reason: str, detail: str) -> None: ...
    def flush(self, timeout_s: float) -> int: ...
    def close(self, timeout_s: float) -> None: ...


class Runner:
    """Run the consume-learn-publish loop until asked to stop, then drain and commit."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        publisher: Sink,
        learner: OnlineLearner,
        metrics: DaemonMetrics,
        checkpointer: Checkpointer,
        health: Health,
        restored_offsets: dict[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._source = source
        self._publisher = publisher
        self._learner = learner
        self._metrics = metrics
        self._clock = clock
        self._stop = threading.Event()
        self._checkpointer = checkpointer
        self._health = health
        # Input partition → next offset to read; the learner's state reflects everything before.
        self._processed: dict[int, int] = dict(restored_offsets or {})
        self._committed: dict[int, int] = dict(restored_offsets or {})
        self._snapshot_offsets = dict(self._processed)
        self._snapshot_step = learner.step
        self._snapshot_failure_streak = 0
        self._snapshot_retry_at = 0.0
        # A restored state is already on disk; a fresh one has never been written.
        self._snapshot_step_written = restored_offsets is not None and bool(restored_offsets)
        self._connected = True
        self.consumed = 0
        self.dead_lettered = 0
        self.predictions_sent = 0
        self.rejected: Counter[str] = Counter()
        self._recorder = LearningRecorder(metrics, learner)
        self._seen_failed: Counter[str] = Counter()
        self._seen_undeliverable: Counter[tuple[str, str]] = Counter()
        self._latest_ts = math.inf  # events stamped later are dead-lettered (future_ts)
        self._last_metrics_step = 0
        self._lag: dict[PartitionKey, int] = {}
        self._commit_failures = 0  # a failed commit is retried until this is 0 again
        # Set by a rollback until the next finite step: a divergence then is not rolled back again.
        self._rollback_mark: tuple[int, int] | None = None
        # Partition → offset its first record after (re)assignment should have.
        self._expected_first: dict[int, int] = {}
        # The input topic's id as the broker reports it; `expected_topic_id` is the one the
        # restored state was built on (set by whoever restores it), so a recreated topic shows.
        self.topic_id: str | None = None
        self.expected_topic_id: str | None = None
        now = clock()
        self._last_snapshot = self._last_lag = self._last_summary = now

    # ---- control ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to finish its current poll, drain and exit (signal-safe)."""
        self._stop.set()

    def run(
        self,
        until: Callable[[Runner], bool] | None = None,
        on_poll: Callable[[Runner], None] | None = None,
    ) -> None:
        """Loop until `request_stop()` or `until(self)` is true, then drain, flush and commit."""
        log.info("loop started", extra={"input_topic": self._kafka.input_topic})
        try:
            while not self._stop.is_set():
                self._poll_once()
                if on_poll is not None:
                    on_poll(self)
                if until is not None and until(self):
                    break
        except BaseException as exc:
            # The state may hold a half-applied event or step: snapshotting or committing it
            # would make the restart skip what caused this. Leave the last snapshot in charge.
            self._abort(exc)
            raise
        self._shutdown()

    # ---- one turn -----------------------------------------------------------------------

    def _poll_once(self) -> None:
        timeout_ms = self._kafka.poll_timeout_ms
        due_in = self._learner.batch_due_in()
        if due_in is not None:
            # Wake up when the open batch is due, not a whole poll timeout later.
            timeout_ms = max(0, min(timeout_ms, int(due_in * 1000) + 1))
        messages = self._source.poll(timeout_ms)
        if self._settings.stream.max_future_s:
            # Once per poll, not per event: a poll takes well under the tolerance.
            self._latest_ts = time.time() + self._settings.stream.max_future_s
        self._check_connection(bool(messages))
        steps_before, sent_before = self._learner.step, self.predictions_sent
        for raw in messages:
            self._handle(raw)
        self._learner.end_of_poll()
        self._publish()
        self._after_divergence_check()
        self._maybe_snapshot()
        if not messages and self._commit_failures and self._connected:
            self._commit(self._snapshot_offsets)  # idle: retry the commit that failed
        now = self._clock()
        self._health.set_assigned(bool(self._source.assignment()))
        progress = (
            bool(messages)
            or self._learner.step > steps_before
            or self.predictions_sent > sent_before
        )
        # Nothing came and nothing is due: in forecast mode a key's newest event waits for its
        # successor forever on a quiet stream, so "buffers empty" would never hold.
        if self._health.beat(now, progress, idle=not messages):
            self._metrics.loop_last_progress.set_to_current_time()
        if self._connected and now - self._last_lag >= LAG_INTERVAL_S:
            self._update_lag()
        if now - self._last_summary >= SUMMARY_INTERVAL_S:
            self._log_summary()

    def _check_connection(self, received: bool) -> None:
        """Follow the broker connection; log and report only when it changes."""
        connected = received or self._source.connected()
        if connected == self._connected:
            return
        self._connected = connected
        self._health.set_connected(connected)
        self._metrics.broker_connected.set(1 if connected else 0)
        if connected:
            log.info("broker connection restored")
        else:
            log.warning("broker connection lost; reconnecting with backoff")

    def on_assign(self, partitions: set[PartitionKey]) -> None:
        """Seek newly assigned partitions to the offsets the learner's state reflects."""
        for topic, partition in partitions:
            if partition in self._processed:
                self._source.seek((topic, partition), self._processed[partition])
                self._expected_first[partition] = self._processed[partition]
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

    def _handle(self, raw: Any) -> None:
        self.consumed += 1
        self._metrics.events_consumed.inc()
        if raw.partition in self._expected_first:
            self._check_first_offset(raw.partition, raw.offset)
        try:
            result = self._learn(raw)
        except TrainStepFailed as exc:
            # Weights, optimizer and many keys' states may be half-updated.
            raise StateUntrusted(str(exc)) from exc
        except Exception as exc:
            result = self._internal_error(raw, exc)
        if result is not None:
            self._dead_letter(raw, result)
        self._processed[raw.partition] = raw.offset + 1

    def _learn(self, raw: Any) -> Rejection | None:
        """Decode and validate completely, then hand the event to the learner."""
        model, stream = self._settings.model, self._settings.stream
        result: Event | Rejection = decode_event(
            raw.value,
            raw.key,
            model.n_features,
            model.n_targets,
            stream.max_event_bytes,
            self._latest_ts,
            stream.max_key_bytes,
        )
        if isinstance(result, Rejection):
            return result
        return self._learner.ingest(result, raw.partition, raw.offset)

    def _internal_error(self, raw: Any, exc: Exception) -> Rejection:
        """A bug met while handling one event outside a train step: answer it and carry on."""
        name = type(exc).__name__
        log.error(
            "internal error handling an event; dead-lettered, the loop carries on",
            exc_info=exc,
            extra={"partition": raw.partition, "offset": raw.offset, "error": name},
        )
        return Rejection(Reason.INTERNAL_ERROR, f"{name}: {exc}")

    def _check_first_offset(self, partition: int, offset: int) -> None:
        """Warn once when a partition resumes elsewhere than the offset its state reflects."""
        expected = self._expected_first.pop(partition)
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

    def _dead_letter(self, raw: Any, rejection: Rejection) -> None:
        self.dead_lettered += 1
        self.rejected[rejection.reason] += 1
        self._metrics.events_rejected.labels(reason=rejection.reason).inc()
        truncated = self._publisher.truncated
        self._publisher.send_dead_letter(
            self._kafka.dead_letter_topic, raw, rejection.reason, rejection.detail
        )
        if self._publisher.truncated > truncated:
            self._metrics.dead_letters_truncated.inc()
        log.debug(
            "event dead-lettered",
            extra={
                "reason": str(rejection.reason),
                "partition": raw.partition,
                "offset": raw.offset,
            },
        )

    def _publish(self) -> None:
        predictions = self._learner.take_outbox()
        now = self._clock()
        sent = 0
        for prediction in predictions:
            sent += self._send_prediction(prediction)
            self._metrics.latency.observe(max(0.0, now - prediction.received_at))
        self.predictions_sent += sent
        self._metrics.predictions_published.inc(sent)
        self._count_undeliverable()
        self._record_learning()

    def _count_undeliverable(self) -> None:
        """Mirror the publisher's dropped-record counts (by topic and reason) into metrics."""
        dropped = getattr(self._publisher, "undeliverable", None) or {}
        for (topic, reason), count in dropped.items():
            seen = self._seen_undeliverable[(topic, reason)]
            if count > seen:
                self._metrics.records_undeliverable.labels(topic=topic, reason=reason).inc(
                    count - seen
                )
                self._seen_undeliverable[(topic, reason)] = count

    def _send_prediction(self, prediction: Any) -> int:
        """Send one prediction, or dead-letter its source event if it can never be sent."""
        source = SourceRecord(self._kafka.input_topic, prediction.partition, prediction.offset)
        try:
            key = prediction.key.encode("utf-8")
            value = encode_prediction(prediction, self._kafka.input_topic)
        except Exception as exc:  # a bug in encoding one record must not stop every commit
            self._dead_letter(source, self._internal_error(source, exc))
            return 0
        size = len(key) + len(value) + RECORD_OVERHEAD_BYTES
        if size > self._kafka.max_request_size:
            limit = self._kafka.max_request_size
            detail = f"prediction record of {size} bytes exceeds kafka.max_request_size={limit}"
            self._dead_letter(source, Rejection(Reason.PREDICTION_TOO_LARGE, detail))
            return 0
        self._publisher.send(self._kafka.predictions_topic, key, value)
        return 1

    def _record_learning(self) -> None:
        self._recorder.record()
        learner = self._learner
        every = self._settings.metrics.every_steps
        if learner.step // every > self._last_metrics_step // every:
            self._last_metrics_step = learner.step
            self._send_metrics_message()

    def _send_metrics_message(self) -> None:
        learner = self._learner
        fields = {
            "step": learner.step,
            "loss": learner.last_loss,
            "prequential_mae": learner.prequential.model_mae,
            "naive_mae": learner.prequential.naive_mae,
            "events": self.consumed,
            "dead_lettered": self.dead_lettered,
            "keys": learner.keys_in_store(),
            "rows_filled": learner.rows_filled,
            "resets": dict(learner.resets),
            "lag": sum(self._lag.values()),
            "time": time.time(),
        }
        self._publisher.send(self._kafka.metrics_topic, None, encode_metrics(fields))

    def _maybe_snapshot(self) -> None:
        config = self._settings.snapshot
        now = self._clock()
        if now < self._snapshot_retry_at:
            return  # backing off after a failure
        if self._learner.consecutive_nonfinite:
            return  # a diverging model is not a good state to come back to
        if not self._connected:
            return  # nothing can be acknowledged or committed; the snapshot would only wait
        steps = self._learner.step - self._snapshot_step
        changed = steps > 0 or self._processed != self._snapshot_offsets
        if config.every_steps and steps >= config.every_steps:
            self.snapshot("steps")
        elif config.every_s and changed and now - self._last_snapshot >= config.every_s:
            self.snapshot("interval")

    def snapshot(self, reason: str) -> bool:
        """Snapshot at this batch boundary, then commit the offsets it reflects.

        Every prediction and dead letter for the events before those offsets is acknowledged by
        the broker first, so a committed offset never passes an unanswered event. A failure
        (records not acknowledged, a disk fault) keeps the daemon running and the last good
        snapshot in place; the snapshot is retried with a backoff.

        Returns:
            Whether the snapshot was written (and the offsets committed).
        """
        self._last_snapshot = self._clock()
        # Leaving: buffered supervised events are answered now by inference (which leaves the
        # training untouched) instead of by the step that will train them after a restart.
        leaving = reason in ("shutdown", "revoke")
        answered = self._learner.flush_predictions(include_supervised=leaving)
        self._publish()
        timeout_s = FLUSH_TIMEOUT_S if leaving else PERIODIC_FLUSH_TIMEOUT_S
        try:
            failures = self._publisher.flush(timeout_s)
        except TimeoutError as exc:
            self._snapshot_failed(reason, str(exc))
            return False
        if failures:
            self._count_failed_deliveries()
            self._snapshot_failed(reason, f"{failures} records not acknowledged by the broker")
            return False
        unchanged = (
            self._learner.step == self._snapshot_step
            and self._processed == self._snapshot_offsets
            and not answered
        )
        if unchanged and self._snapshot_step_written:
            self._commit(self._snapshot_offsets)  # retries a commit that failed, if any
            return True  # the newest snapshot already holds exactly this state
        started = time.perf_counter()
        try:
            info = self._checkpointer.save(dict(self._processed))
        except OSError as exc:
            self._metrics.snapshot_failures.inc()
            self._snapshot_failed(reason, f"cannot write snapshot: {exc}")
            return False
        seconds = time.perf_counter() - started
        self._metrics.snapshot_duration.observe(seconds)
        self._metrics.snapshot_last_success.set(time.time())
        self._snapshot_step = self._learner.step
        self._snapshot_offsets = dict(info.offsets)
        self._snapshot_step_written = True
        if self._snapshot_failure_streak:
            log.info("snapshots recovered", extra={"after_failures": self._snapshot_failure_streak})
        self._snapshot_failure_streak = 0
        self._snapshot_retry_at = 0.0
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
        self._commit(info.offsets)
        return True

    def _count_failed_deliveries(self) -> None:
        failed = self._publisher.failed_by_topic
        for topic, metric in (
            (self._kafka.predictions_topic, self._metrics.predictions_failed),
            (self._kafka.dead_letter_topic, self._metrics.dead_letters_failed),
        ):
            metric.inc(failed[topic] - self._seen_failed[topic])
            self._seen_failed[topic] = failed[topic]

    def _snapshot_failed(self, reason: str, problem: str) -> None:
        """Back off (1 s, 2 s, ... capped) and log the first failure of a streak only."""
        self._snapshot_failure_streak += 1
        delay = min(SNAPSHOT_RETRY_MAX_S, 2.0 ** (self._snapshot_failure_streak - 1))
        self._snapshot_retry_at = self._clock() + delay
        if self._snapshot_failure_streak == 1:
            log.error(
                "snapshot failed; retrying with backoff, last good snapshot kept",
                extra={"reason": reason, "problem": problem},
            )

    def _after_divergence_check(self) -> None:
        """Roll back after `max_nonfinite_steps` non-finite steps, but never twice in a row.

        A divergence that recurs after a rollback, before any finite step, would replay the same
        events into the same divergence forever; those batches are skipped instead: the learner
        has answered their events and counted them untrained, and the weights were not updated.
        """
        learner = self._learner
        if self._rollback_mark is not None and self._finite_step_since_rollback():
            self._rollback_mark = None
        if learner.consecutive_nonfinite < self._settings.model.max_nonfinite_steps:
            return
        if self._rollback_mark is None:
            self._rollback()
            return
        self._skip_diverged(learner.consecutive_nonfinite)

    def _finite_step_since_rollback(self) -> bool:
        assert self._rollback_mark is not None
        step, nonfinite = self._rollback_mark
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

    def _rollback(self) -> None:
        """Go back to the last good snapshot after repeated non-finite steps, and replay."""
        skipped = self._learner.consecutive_nonfinite
        info = self._checkpointer.rollback()
        if info is None:
            log.error("training diverged and there is no snapshot to roll back to")
            self._learner.consecutive_nonfinite = 0
            return
        self._metrics.rollbacks.inc()
        self._resync_counters()
        self._rollback_mark = (self._learner.step, self._learner.nonfinite_losses)
        self._processed = dict(info.offsets)
        self._snapshot_offsets = dict(info.offsets)
        self._snapshot_step = info.step
        self._snapshot_step_written = True
        for topic, partition in self._source.assignment():
            if partition in info.offsets:
                self._source.seek((topic, partition), info.offsets[partition])
        log.warning(
            "training diverged; rolled back to the last good snapshot",
            extra={"snapshot": info.snapshot_id, "step": info.step, "nonfinite_steps": skipped},
        )

    def _resync_counters(self) -> None:
        """Take the restored learner's counters as seen: Prometheus counters never go back."""
        self._recorder.resync()
        self._last_metrics_step = self._learner.step

    def _commit(self, offsets: dict[int, int]) -> None:
        """Commit what changed; a failure is retried at the next snapshot, when idle, at exit."""
        changed = {p: o for p, o in offsets.items() if self._committed.get(p) != o}
        if not changed:
            return
        try:
            self._source.commit({(self._kafka.input_topic, p): o for p, o in changed.items()})
        except Exception as exc:  # state is safe on disk; only the commit must be done again
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
        self._committed.update(changed)

    def _update_lag(self) -> None:
        self._last_lag = self._clock()
        try:
            self._lag = self._source.lag()
        except TimeoutError:
            return  # the broker is unreachable; the connection check reports that
        self._metrics.set_consumer_lag(self._lag)

    def _log_summary(self) -> None:
        self._last_summary = self._clock()
        learner = self._learner
        log.info(
            "progress",
            extra={
                "events": self.consumed,
                "dead_lettered": self.dead_lettered,
                "predictions": self.predictions_sent,
                "steps": learner.step,
                "loss": round(learner.last_loss, 5),
                "mae": round(learner.prequential.model_mae, 4),
                "naive_mae": round(learner.prequential.naive_mae, 4),
                "lag": sum(self._lag.values()),
            },
        )

    def _abort(self, exc: BaseException) -> None:
        """Leave after an unexpected failure: no snapshot, no commit; answers sent are kept."""
        log.critical(
            "loop failed; exiting without snapshot or commit, the last snapshot stays in charge",
            exc_info=exc,
            extra={"error": type(exc).__name__, "offsets_committed": dict(self._committed)},
        )
        try:
            self._source.close()
        finally:
            self._publisher.close(FLUSH_TIMEOUT_S)

    def _shutdown(self) -> None:
        log.info("draining")
        try:
            self.snapshot("shutdown")
        finally:
            self._source.close()
            self._publisher.close(FLUSH_TIMEOUT_S)
        log.info(
            "stopped",
            extra={
                "events": self.consumed,
                "dead_lettered": self.dead_lettered,
                "predictions": self.predictions_sent,
                "steps": self._learner.step,
            },
        )
