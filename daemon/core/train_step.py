"""The train steps: fixed-shape model calls over up to B ready keys each, and their bookkeeping.

Pure. `OnlineLearner` decides when a batch closes; `Trainer` lays the step it closed: it takes
the forecasts waiting (to run inside the step's call when they fit one inference batch), lays
the candidate keys' trainable events into a batch and takes them from the keys' queues. Closed
batches then wait and run together, up to `MAX_STEPS_PER_CALL` in one call of the model
(`step_call.py`): the keys' states are written back, each step's events answered, scored and
released, in closing order, as if each step had run alone. It owns the counters of what
training did (steps, losses, events trained or lost, resets), which the runner, metrics,
checkpoints and snapshots read through the learner.

The model is injected so this module never imports TensorFlow itself.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Protocol

import numpy as np

from daemon.core.batching import (
    Batch,
    Member,
    Place,
    build_train_batch,
    members_by_store,
    train_segment,
    unanswered_in,
)
from daemon.core.derived import input_names
from daemon.core.forecasts import Forecaster, InferModel, KeyRef
from daemon.core.outbox import Outbox
from daemon.core.pending import COLD_SCALE, HAS_NAIVE
from daemon.core.prequential import IntervalScores, Prequential, RollingPrequential
from daemon.core.ready_keys import ReadyKeys
from daemon.core.step_call import MAX_STEPS_PER_CALL, QueuedStep, lay_call, write_back
from daemon.core.store import KeyStateStore, ResetReason
from daemon.settings import Settings


class StepModel(InferModel, Protocol):
    """What the learner needs from the model (see `daemon.model.lstm.StatefulLSTM`)."""

    @property
    def state_shape(self) -> tuple[int, int, int, int]: ...

    def train_steps(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run S steps in one call (see `daemon.model.steps.run_steps` for the arrays)."""
        ...


# The untrained events' offsets kept for the divergence log line.
NONFINITE_OFFSETS_KEPT = 1000


class TrainStepFailed(RuntimeError):
    """A train step raised after it may have changed the model or keys' states."""


class Trainer:
    """Run train steps over ready keys and count what they did.

    Two counters are shared with the learner's ingest, which adds to them through the learner:
    `untrained` (events lost at a sequence end or a dropped key, besides those of non-finite
    steps here) and `resets` (state resets by reason; the periodic ones are counted here).
    """

    def __init__(
        self,
        settings: Settings,
        model: StepModel,
        forecaster: Forecaster,
        keys: ReadyKeys,
        outbox: Outbox,
    ) -> None:
        """Set up for the settings' window and widths, sharing the learner's collaborators."""
        self._model = model
        self._forecaster = forecaster
        self._keys = keys
        self._outbox = outbox
        self._window = settings.model.window
        self._batch_size = model.state_shape[2]
        self._n_inputs = len(input_names(settings))
        self._target_width = settings.model.n_targets * settings.model.horizon
        self._reset_every = settings.stream.reset_every_steps
        self.step = 0
        self.last_loss = float("nan")
        self.resets: Counter[str] = Counter()
        self.untrained = 0  # events that never got a target (end of a sequence) or lost state
        self.trained_events = 0  # timesteps trained on: each accepted event at most once
        self.prequential = Prequential(settings.model.horizon)  # since start: demo's, report's
        self.rolling = RollingPrequential(settings.metrics.prequential_window)
        # Coverage and interval score of the published intervals (none without levels).
        self.interval_scores = IntervalScores(
            settings.intervals.levels, settings.metrics.prequential_window
        )
        self.nonfinite_losses = 0
        self.consecutive_nonfinite = 0
        # (partition, offset) of the events of non-finite steps; the runner logs and clears it.
        self.nonfinite_offsets: list[tuple[int, int]] = []
        self.rows_filled = 0  # keys in the last train step
        self.rows_filled_total = 0
        self.step_seconds: list[float] = []  # drained by the runner into a histogram
        self.step_rows: list[int] = []  # likewise: keys filled per step
        self._queue: list[QueuedStep] = []  # closed batches waiting for their call

    def train(self, stores: dict[int, KeyStateStore], candidates: list[KeyRef]) -> bool:
        """Close a batch over the first B candidates that hold trainable events; queue its step.

        A step consumes events and changes the weights: the forecasts waiting now are answered
        first, with the weights of the steps before it. When they fit one inference batch they
        run inside the step's call; otherwise in calls of their own, after the steps queued so
        far. The step's events leave their keys' queues now, so the batch-close rule sees them
        consumed; the step runs in the next call (`run_queued`), together with up to
        `MAX_STEPS_PER_CALL` - 1 others, and a periodic reset ends a call. The events' inputs
        must be normalised already.

        Returns:
            Whether a step was queued (False when no candidate holds a trainable event).

        Raises:
            TrainStepFailed: the model raised (running a full queue); it or the keys' states may
                be half updated.
        """
        segments = self._segments(stores, candidates)
        forecasts = self._forecaster.take_one_batch(stores) if segments else None
        if forecasts is None and self._forecaster.waiting:
            self.run_queued(stores)
            self._forecaster.answer_waiting(stores)
        if not segments:
            return False
        batch = build_train_batch(
            segments, self._batch_size, self._window, self._n_inputs, self._target_width
        )
        self._queue.append(QueuedStep(batch, forecasts))
        for store, row, segment in segments:
            before = int(store.trainable[row])
            store.take(row, len(segment))  # released once the step ran
            self._keys.requeue((store.partition, row), before, int(store.trainable[row]))
        self._keys.reopen(stores)
        every = self._reset_every
        steps = self.step + len(self._queue)
        if len(self._queue) >= MAX_STEPS_PER_CALL or (every and steps % every == 0):
            self.run_queued(stores)
        return True

    @property
    def queued(self) -> int:
        """Return how many closed batches wait for their call."""
        return len(self._queue)

    def run_queued(self, stores: dict[int, KeyStateStore]) -> None:
        """Run the queued steps in one call; answer, score and count each, in closing order.

        Raises:
            TrainStepFailed: the model raised; it or the keys' states may be half updated.
        """
        if not self._queue:
            return
        queued, self._queue = self._queue, []
        call = lay_call(queued, *self._forecaster.shape)
        started = time.perf_counter()
        try:
            losses, predictions, states, forecasts, ahead = self._model.train_steps(*call.inputs)
        except Exception as exc:
            raise TrainStepFailed(f"train step failed: {type(exc).__name__}: {exc}") from exc
        seconds = (time.perf_counter() - started) / len(queued)
        write_back(call.keys, states, "states")
        write_back(call.ahead_keys, ahead, "ahead")
        for i, q in enumerate(queued):
            if q.forecasts is not None:
                self._forecaster.settle(q.forecasts, forecasts[i])
            self.step_seconds.append(seconds)
            self._settle(q.batch, float(losses[i]), predictions[i])
            self.step += 1
            self._periodic_reset(stores)

    def _segments(self, stores: dict[int, KeyStateStore], candidates: list[KeyRef]) -> list[Member]:
        """Return up to B candidates' (store, row, events to train), in the candidates' order."""
        segments: list[Member] = []
        for partition, row in candidates:
            store = stores[partition]
            segment = train_segment(store, row, self._window)
            if segment:
                segments.append((store, row, segment))
                if len(segments) == self._batch_size:
                    break
        return segments

    def _settle(self, batch: Batch, loss: float, predictions: np.ndarray) -> None:
        """Answer, score and release a step's events, now that it ran (its states are written)."""
        finite = self._record_loss(loss, batch)
        for store, places in members_by_store(batch.members).items():
            self._answer_and_score(store, places, predictions, finite)
            for _, _, segment in places:
                for e in segment:
                    store.events.release(e)
                if finite:
                    self.trained_events += len(segment)
                else:
                    self.untrained += len(segment)
        self.rows_filled = len(batch.members)
        self.step_rows.append(self.rows_filled)
        self.rows_filled_total += self.rows_filled

    def _record_loss(self, loss: float, batch: Batch) -> bool:
        """Count a step's loss; return whether it was finite (the states are usable)."""
        self.last_loss = loss
        if math.isfinite(loss):
            self.consecutive_nonfinite = 0
            return True
        # The model skipped the update; its states may be NaN too: keep the old ones, and let
        # the batch's events go untrained rather than retry them forever.
        self.nonfinite_losses += 1
        self.consecutive_nonfinite += 1
        self.nonfinite_offsets += [
            (store.partition, int(store.events.offset[e]))
            for store, _, segment in batch.members
            for e in segment
        ]
        # Only logged (by the skip after a roll-back): the newest are enough, and a model that
        # keeps diverging must not grow this list for ever.
        del self.nonfinite_offsets[:-NONFINITE_OFFSETS_KEPT]
        return False

    def _answer_and_score(
        self,
        store: KeyStateStore,
        places: list[Place],
        predictions: np.ndarray,
        ok: bool,
    ) -> None:
        """Answer a step's events still unanswered (supervised ones) and score the step's."""
        events = store.events
        key_rows, unanswered, outputs = unanswered_in(store, places, predictions)
        if unanswered:
            self._outbox.publish(store, key_rows, unanswered, outputs, self.step)
        if ok:
            laid = [e for _, _, segment in places for e in segment]
            chosen = np.flatnonzero(events.flags[laid] & HAS_NAIVE)
            scored = [laid[i] for i in chosen]
            if scored:
                prediction, naive = events.prediction[scored], events.naive[scored]
                target = events.target[scored]
                self.prequential.add(prediction, naive, target)
                self.rolling.add(prediction, naive, target)
                if store.intervals is not None:
                    rows = np.array([row for _, row, segment in places for _ in segment])[chosen]
                    self._calibrate(store, rows, scored, prediction, target)

    def _calibrate(
        self,
        store: KeyStateStore,
        rows: np.ndarray,
        scored: list[int],
        prediction: np.ndarray,
        target: np.ndarray,
    ) -> None:
        """Score the published intervals of scored events, then move the keys' trackers."""
        calibrator = store.intervals
        assert calibrator is not None  # the caller checked
        events = store.events
        published = events.bounds[scored]
        cold = (events.flags[scored] & COLD_SCALE) != 0
        self.interval_scores.add(published, target)
        calibrator.update(rows, target - prediction, events.spread[scored], cold, published, target)

    def _periodic_reset(self, stores: dict[int, KeyStateStore]) -> None:
        """Zero every key's state each `stream.reset_every_steps` steps (0: never)."""
        every = self._reset_every
        if every and self.step % every == 0:
            self.resets[ResetReason.PERIODIC] += sum(s.zero_all_states() for s in stores.values())
