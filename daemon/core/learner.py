"""The online learner: accepted events in, train steps and predictions out.

No Kafka here: the runner decodes messages and hands over events with their source partition and
offset; the learner routes them to slots, normalises them, closes batches, runs the injected
model and queues one prediction per event in `outbox`. The model is injected so this module
never imports TensorFlow itself (any object with `state_shape`, `train_step` and `infer` works).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from daemon.core.batching import build_infer_batch, build_train_batch, needs_prediction
from daemon.core.events import Event, Reason, Rejection
from daemon.core.prequential import RollingPrequential
from daemon.core.scaling import RunningStats, denormalise, normalise
from daemon.core.slots import KeyState, Pending, ResetReason, SlotTable, reset_reason
from daemon.settings import Settings


class StepModel(Protocol):
    """What the learner needs from the model (see `daemon.model.lstm.StatefulLSTM`)."""

    @property
    def state_shape(self) -> tuple[int, int, int, int]: ...

    def train_step(
        self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, states: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]: ...

    def infer(
        self, x: np.ndarray, mask: np.ndarray, states: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction to publish for one input event."""

    key: str
    ts: float
    partition: int
    offset: int
    mode: str  # "forecast" or "supervised"
    prediction: np.ndarray
    target: np.ndarray | None
    step: int
    received_at: float


@dataclass(slots=True)
class Prequential:
    """Running absolute errors of the model and of the naive forecast on the same events."""

    model_abs: float = 0.0
    naive_abs: float = 0.0
    count: int = 0  # scored target values

    def add(self, prediction: np.ndarray, naive: np.ndarray, target: np.ndarray) -> None:
        self.model_abs += float(np.abs(prediction - target).sum())
        self.naive_abs += float(np.abs(naive - target).sum())
        self.count += target.size

    @property
    def model_mae(self) -> float:
        return self.model_abs / self.count if self.count else float("nan")

    @property
    def naive_mae(self) -> float:
        return self.naive_abs / self.count if self.count else float("nan")


class OnlineLearner:
    """Route keyed events into state slots and train one stateful step per closed batch."""

    def __init__(
        self, settings: Settings, model: StepModel, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._model_settings = settings.model
        self._stream = settings.stream
        self._model = model
        self._clock = clock
        self._target_index = np.array(settings.model.target_index, dtype=np.int64)
        self.table = SlotTable(
            model.state_shape,
            settings.model.n_features,
            settings.model.n_targets,
            settings.stream.max_parked_keys,
        )
        self.outbox: list[Prediction] = []
        self.step = 0
        self.last_loss = float("nan")
        self.resets: Counter[str] = Counter()
        self.untrained = 0  # events that never got a target (end of a sequence) or lost state
        self.trained_events = 0  # timesteps trained on: each accepted event at most once
        self.prequential = Prequential()  # since start: the demo's and the report's figure
        self.rolling = RollingPrequential(settings.metrics.prequential_window)
        self.nonfinite_losses = 0
        self.consecutive_nonfinite = 0
        self.step_seconds: list[float] = []  # drained by the runner into a histogram
        self._batch_opened_at: float | None = None

    # ---- ingest -------------------------------------------------------------------------

    def ingest(self, event: Event, partition: int, offset: int) -> Rejection | None:
        """Accept one decoded event; return a rejection if it goes back in time for its key."""
        known = self.table.bound(event.key) or self.table.parked.get(event.key)
        if known is not None and known.last_ts is not None and event.ts < known.last_ts:
            return Rejection(
                Reason.OUT_OF_ORDER, f"ts {event.ts} is before {known.last_ts} for this key"
            )
        state = self.table.bound(event.key) or self._bind(event.key)
        self.table.touch(event.key)
        reason = reset_reason(state, event.ts, event.reset, self._stream.reset_after_idle_s)
        if reason is not None:
            self.resets[reason] += 1
            self._end_sequence(state)
        pending = self._pending(state, event, partition, offset, starts_sequence=reason is not None)
        state.buffer.append(pending)
        state.last_ts = event.ts
        if self._batch_opened_at is None:
            self._batch_opened_at = pending.received_at
        while state.trainable_count() >= self._model_settings.window:
            self.train()
        return None

    def _bind(self, key: str) -> KeyState:
        if not self.table.has_free_slot():
            slot = self.table.victim()
            victim = self.table.rows[slot]
            if any(needs_prediction(p, include_supervised=True) for p in victim.buffer):
                self.flush_predictions(include_supervised=True)
            dropped = self.table.evict(slot)
            if dropped is not None:
                self.resets[ResetReason.PARKED_DROPPED] += 1
                self.untrained += len(dropped.buffer)
        _, state = self.table.bind(key)
        return state

    def _end_sequence(self, state: KeyState) -> None:
        """Close a key's current sequence before an event that starts a new one."""
        if state.buffer and state.buffer[-1].y is None:
            # Its successor starts a new sequence, so this event never gets a target.
            if state.buffer[-1].prediction is None:
                self.flush_predictions(include_supervised=True)
            state.buffer.pop()
            self.untrained += 1
        if any(p.prediction is None for p in state.buffer):
            # Inference runs over the newest sequence only: predict the old one now.
            self.flush_predictions(include_supervised=True)

    def _scale_features(
        self, state: KeyState, features: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold the event into the key's statistics; return (normalised, location, spread)."""
        if not self._stream.normalise:
            size = len(features)
            return features, np.zeros(size), np.ones(size)
        state.feature_stats.update(features)
        location, spread = state.feature_stats.scale()
        return normalise(features, location, spread), location, spread

    def _pending(
        self, state: KeyState, event: Event, partition: int, offset: int, starts_sequence: bool
    ) -> Pending:
        x, feature_location, feature_spread = self._scale_features(state, event.features)
        ti = self._target_index
        previous = state.buffer[-1] if state.buffer else None
        if previous is not None and previous.y is None and not starts_sequence:
            previous.target = event.features[ti]
            previous.y = self._scaled_target(previous.target, previous)
        if event.target is None:
            naive = event.features[ti]
            location, spread = self._feature_target_scale(
                state, naive, starts_sequence, feature_location[ti], feature_spread[ti]
            )
        else:
            location, spread = self._supervised_target_scale(state)
            naive = state.last_target
        pending = Pending(
            partition=partition,
            offset=offset,
            ts=event.ts,
            x=x.astype(np.float32),
            naive=naive,
            location=location,
            spread=spread,
            forecast_mode=event.target is None,
            starts_sequence=starts_sequence,
            received_at=self._clock(),
        )
        if event.target is not None:
            pending.target = event.target
            pending.y = self._scaled_target(event.target, pending)
            if self._stream.normalise:
                state.target_stats.update(event.target)
            state.last_target = event.target
        return pending

    def _feature_target_scale(
        self,
        state: KeyState,
        level: np.ndarray,
        starts_sequence: bool,
        location: np.ndarray,
        spread: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return how the next value of this key's target features will be normalised.

        "level": by the key's running mean and spread of those features. "difference": around
        the current value, by the spread of the key's steps, so the model learns the change and
        an untrained model forecasts the last value.
        """
        if self._stream.target_scaling == "level":
            return location, spread
        if state.diff_stats is None:
            state.diff_stats = RunningStats(len(level))
        if state.last_level is not None and not starts_sequence:
            state.diff_stats.update(level - state.last_level)
        state.last_level = level
        if self._stream.normalise and state.diff_stats.count >= 2:
            spread = state.diff_stats.scale()[1]
        return level, spread

    def _supervised_target_scale(self, state: KeyState) -> tuple[np.ndarray, np.ndarray]:
        # Scale from the targets seen before this one: this event's own target must not leak
        # into the denormalised prediction published for it.
        return state.target_stats.scale()

    def _scaled_target(self, target: np.ndarray, pending: Pending) -> np.ndarray:
        if not self._stream.normalise:
            return target.astype(np.float32)
        return normalise(target, pending.location, pending.spread).astype(np.float32)

    # ---- batches --------------------------------------------------------------------------

    def train(self) -> bool:
        """Close the batch: run one train step over every slot's trainable events.

        Returns:
            Whether a step ran (False when no slot held a trainable event).
        """
        self.flush_predictions(include_supervised=False)
        batch = build_train_batch(
            self.table.rows,
            self._model_settings.window,
            self._model_settings.n_features,
            self._model_settings.n_targets,
        )
        if batch is None:
            return False
        for slot in batch.reset_rows:
            self.table.reset_row(slot)
        started = time.perf_counter()
        loss, predictions, states = self._model.train_step(
            batch.x, batch.y, batch.mask, self.table.states
        )
        self.step_seconds.append(time.perf_counter() - started)
        self.last_loss = loss
        finite = math.isfinite(loss)
        if finite:
            self.table.states[...] = states
            self.consecutive_nonfinite = 0
        else:
            # The model skipped the update; its states may be NaN too: keep the old ones, and
            # let the batch's events go untrained rather than retry them forever.
            self.nonfinite_losses += 1
            self.consecutive_nonfinite += 1
        for slot, taken in batch.taken:
            state = self.table.rows[slot]
            for t, pending in enumerate(taken):
                if pending.prediction is None:
                    self._publish(state.key, pending, predictions[slot, t])
                if finite and pending.naive is not None:
                    self.prequential.add(pending.prediction, pending.naive, pending.target)
                    self.rolling.add(pending.prediction, pending.naive, pending.target)
            del state.buffer[: len(taken)]
            if finite:
                self.trained_events += len(taken)
            else:
                self.untrained += len(taken)
        self.step += 1
        self._periodic_reset()
        self._batch_opened_at = self._oldest_waiting()
        return True

    def _periodic_reset(self) -> None:
        every = self._stream.reset_every_steps
        if every and self.step % every == 0:
            self.resets[ResetReason.PERIODIC] += self.table.reset_all()

    def _oldest_waiting(self) -> float | None:
        times = [
            p.received_at
            for _, state in self.table.bound_states()
            for p in state.buffer
            if p.trainable
        ]
        return min(times) if times else None

    def flush_predictions(self, include_supervised: bool) -> int:
        """Publish predictions for buffered events that await one, by one inference pass.

        Forecast-mode events always qualify; supervised ones only when `include_supervised`
        (before their slot is given away, since their prediction normally comes from the train
        step). Returns how many were published.
        """
        batch = build_infer_batch(
            self.table.rows,
            self._model_settings.window + 1,
            self._model_settings.n_features,
            include_supervised,
        )
        if batch is None:
            return 0
        start = self.table.states.copy()
        start[:, :, batch.zero_rows, :] = 0.0
        predictions, _ = self._model.infer(batch.x, batch.mask, start)
        for slot, t, pending in batch.wanted:
            self._publish(self.table.rows[slot].key, pending, predictions[slot, t])
        return len(batch.wanted)

    def _publish(self, key: str, pending: Pending, normalised: np.ndarray) -> None:
        if self._stream.normalise:
            value = denormalise(normalised.astype(np.float64), pending.location, pending.spread)
        else:
            value = normalised.astype(np.float64)
        pending.prediction = value
        self.outbox.append(
            Prediction(
                key=key,
                ts=pending.ts,
                partition=pending.partition,
                offset=pending.offset,
                mode="forecast" if pending.forecast_mode else "supervised",
                prediction=value,
                target=None if pending.forecast_mode else pending.target,
                step=self.step,
                received_at=pending.received_at,
            )
        )

    # ---- loop hooks -------------------------------------------------------------------------

    def end_of_poll(self) -> None:
        """Publish waiting forecasts, and close the batch if it has waited long enough."""
        self.flush_predictions(include_supervised=False)
        wait_ms = self._stream.max_batch_wait_ms
        opened = self._batch_opened_at
        expired = opened is not None and (self._clock() - opened) * 1000 >= wait_ms
        if wait_ms and expired and not self.train():
            self._batch_opened_at = None

    def batch_due_in(self) -> float | None:
        """Return seconds until the wall-clock batch close (<= 0: due), or None if none is set."""
        wait_ms = self._stream.max_batch_wait_ms
        if not wait_ms or self._batch_opened_at is None:
            return None
        return self._batch_opened_at + wait_ms / 1000 - self._clock()

    def drain(self) -> None:
        """Train every trainable event, parked keys' too, and publish every waiting prediction.

        Parked keys come back B at a time; the keys they displace have nothing left to train.
        """
        while self.train():
            pass
        waiting = [key for key, state in self.table.parked.items() if state.trainable_count()]
        for start in range(0, len(waiting), self.table.batch_size):
            for key in waiting[start : start + self.table.batch_size]:
                self._bind(key)
            while self.train():
                pass
        self.flush_predictions(include_supervised=True)

    def take_outbox(self) -> list[Prediction]:
        """Return and clear the queued predictions."""
        out, self.outbox = self.outbox, []
        return out

    def reset(self) -> None:
        """Forget everything learned and buffered: the state of a learner just built."""
        self.__init__(self._settings, self._model, self._clock)

    def after_restore(self) -> None:
        """Recompute what is derived from restored state (the open batch's age)."""
        self._batch_opened_at = self._oldest_waiting()

    def key_state(self, key: str) -> np.ndarray | None:
        """Return a key's [layers, 2, units] LSTM state (bound or parked), for tests and tools."""
        return self.table.key_state_rows(key)
