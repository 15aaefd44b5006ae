"""The daemon loop: poll → decode → learn → publish → checkpoint, with its collaborators injected.

The runner owns no model logic and imports no client library: the event source, the publisher,
the learner and the metrics are handed in, so tests can drive it against the real broker or
against fakes. What a checkpoint is lives in `daemon.persist.checkpoint`, what a rebalance does
in `daemon.service.partitions` (`runner.moves` holds the consumer's rebalance callbacks), how
answers are sent in `daemon.service.answers`, the vital signs in `daemon.service.vitals`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from daemon.core.events import EventDecoder, Rejection
from daemon.core.learner import OnlineLearner, TrainStepFailed
from daemon.persist.checkpoint import FLUSH_TIMEOUT_S, Checkpoint
from daemon.persist.checkpointing import Checkpointer
from daemon.service.answers import Answers, Sink, SourceRecord, internal_error
from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.partitions import PartitionMoves
from daemon.service.ports import Source, StateStoreTopic, Syncer
from daemon.service.vitals import Vitals
from daemon.settings import Settings

log = logging.getLogger("lstmd.runner")

__all__ = ["Runner", "Sink", "Source", "SourceRecord", "StateUntrusted"]

PartitionKey = tuple[str, int]


class StateUntrusted(RuntimeError):
    """The learner's state can no longer be trusted: exit without snapshot or commit."""


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
        state_topic: StateStoreTopic | None = None,
        weights: Syncer | None = None,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._source = source
        self._publisher = publisher
        self._learner = learner
        self._metrics = metrics
        self._clock = clock
        self._stop = threading.Event()
        self._weights = weights
        self._health = health
        self.answers = Answers(settings, publisher, learner, metrics, clock)
        self.checkpoint = Checkpoint(
            settings,
            source,
            publisher,
            checkpointer,
            learner,
            metrics,
            answer=self._answer_all,
            state_topic=state_topic,
            restored_offsets=restored_offsets,
            clock=clock,
            snapshot_meta=(lambda: {"weights_version": weights.version}) if weights else None,
        )
        self.moves = PartitionMoves(
            self._kafka.input_topic, source, learner, self.checkpoint, metrics, state_topic, clock
        )
        self.vitals = Vitals(
            source, health, metrics, self.checkpoint.state_topic_lag, self._summary, clock
        )
        self.consumed = 0
        model, stream = settings.model, settings.stream
        # Events stamped later than its `latest_ts` are dead-lettered (future_ts).
        self._decoder = EventDecoder(
            model.n_features, model.n_targets, stream.max_event_bytes, stream.max_key_bytes
        )

    @property
    def dead_lettered(self) -> int:
        return self.answers.dead_lettered

    @property
    def predictions_sent(self) -> int:
        return self.answers.predictions_sent

    @property
    def rejected(self) -> Counter[str]:
        return self.answers.rejected

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
                try:
                    self._poll_once()
                except TrainStepFailed as exc:
                    # A poll's closed batches run together, at the latest when it ends: a step
                    # may fail outside any one event too. Weights, optimizer and many keys'
                    # states may be half-updated.
                    raise StateUntrusted(str(exc)) from exc
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
            self._decoder.latest_ts = time.time() + self._settings.stream.max_future_s
        self.vitals.check_connection(bool(messages))
        steps_before, sent_before = self._learner.step, self.predictions_sent
        for raw in messages:
            self._handle(raw)
        self._learner.end_of_poll()
        self._publish()
        # Per poll, after its answers: a scrape that sees them consumed sees their predictions.
        self._metrics.events_consumed.inc(len(messages))
        if self.checkpoint.after_divergence_check():
            lost, self.checkpoint.lost_in_rollback = self.checkpoint.lost_in_rollback, set()
            self.moves.restore_after_rollback(lost)
            self.answers.resync()
        connected = self.vitals.connected
        if self._weights is not None and connected:
            self._weights.maybe_sync()
        self.checkpoint.maybe_save(connected)
        if not messages and connected:
            self.checkpoint.retry_commit()  # idle: retry the commit that failed, if any
        grew = self._learner.step > steps_before or self.predictions_sent > sent_before
        self.vitals.after_turn(bool(messages) or grew, idle=not messages)

    def _handle(self, raw: Any) -> None:
        self.consumed += 1
        if raw.partition in self.moves.expected_first:
            self.moves.check_first_offset(raw.partition, raw.offset)
        try:
            result = self._learn(raw)
        except TrainStepFailed as exc:
            # Weights, optimizer and many keys' states may be half-updated.
            raise StateUntrusted(str(exc)) from exc
        except Exception as exc:
            result = internal_error(raw, exc)
        if result is not None:
            self.answers.dead_letter(raw, result)
        self.checkpoint.processed[raw.partition] = raw.offset + 1

    def _learn(self, raw: Any) -> Rejection | None:
        """Decode and validate completely, then hand the event to the learner."""
        result = self._decoder.decode(raw.value, raw.key)
        if isinstance(result, Rejection):
            return result
        return self._learner.ingest(result, raw.partition, raw.offset)

    def _publish(self) -> None:
        self.answers.publish(self.consumed, sum(self.vitals.lag.values()))

    def _answer_all(self, leaving: bool) -> int:
        """Answer what the learner holds and hand it to the publisher (before a checkpoint)."""
        # Leaving: buffered supervised events are answered now by inference (which leaves the
        # training untouched) instead of by the step that will train them after a restart.
        answered = self._learner.flush_predictions(include_supervised=leaving)
        self._publish()
        return answered

    def _summary(self) -> dict[str, Any]:
        learner = self._learner
        return {
            "events": self.consumed,
            "dead_lettered": self.dead_lettered,
            "predictions": self.predictions_sent,
            "steps": learner.step,
            "trained_events": learner.trained_events,
            "loss": round(learner.last_loss, 5),
            "mae": round(learner.prequential.model_mae, 4),
            "naive_mae": round(learner.prequential.naive_mae, 4),
        }

    def _abort(self, exc: BaseException) -> None:
        """Leave after an unexpected failure: no snapshot, no commit; answers sent are kept."""
        log.critical(
            "loop failed; exiting without snapshot or commit, the last snapshot stays in charge",
            exc_info=exc,
            extra={"error": type(exc).__name__, "offsets_committed": self.checkpoint.committed},
        )
        # Before the consumer closes: its close fires the revoke callback, which checkpoints.
        self.checkpoint.abandon()
        try:
            self._source.close()
        finally:
            self._publisher.close(FLUSH_TIMEOUT_S)

    def _shutdown(self) -> None:
        log.info("draining")
        try:
            self.checkpoint.save("shutdown")
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
                "trained_events": self._learner.trained_events,
                "offsets": dict(self.checkpoint.committed),
            },
        )
