"""The online learner: accepted events in, train steps and predictions out.

No Kafka here: the runner decodes messages and hands over events with their source partition and
offset. Each input partition has its own key-state store (DESIGN §4). The learner puts each
event in its key's pending queue and runs the loop's order; the concepts live next door:

- `DeferredInputs` (`deferred.py`): inputs normalised later, in rounds over keys;
- `TargetAssembly` (`targets.py`): an event becomes trainable once its target is known;
- `ReadyKeys` (`ready_keys.py`): keys waiting to train, and the batch-close rule;
- `batching.py`: up to B ready keys × T events in one fixed-shape train step;
- `Trainer` (`train_step.py`): runs the step a closed batch calls for, and counts what training
  did (the learner's `step`, `untrained`, `resets`, ... are its counters);
- `Forecaster` (`forecasts.py`): forecasts answered once per poll (or before a step that would
  consume them) by batched inference from each key's state ahead;
- `Outbox` (`outbox.py`): one `Prediction` per answered event, until the runner takes them.

The model is injected so this module never imports TensorFlow itself.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from daemon.core.deferred import DeferredInputs
from daemon.core.derived import DerivedFeatures, derived_for, input_names
from daemon.core.events import Event, Reason, Rejection
from daemon.core.featurize import EventScaling
from daemon.core.forecasts import Forecaster, KeyRef
from daemon.core.intervals import IntervalCalibrator
from daemon.core.outbox import Outbox
from daemon.core.pending import (
    ANSWERED,
    COLD_SCALE,
    FORECAST_MODE,
    HAS_NAIVE,
    HAS_Y,
    NO_EVENT,
    STARTS_SEQUENCE,
)
from daemon.core.prequential import IntervalScores, Prequential, RollingPrequential
from daemon.core.ready_keys import ReadyKeys
from daemon.core.records import Prediction
from daemon.core.smoothing import SmoothedFeatures, smoothing_for
from daemon.core.store import KeyStateStore, ResetReason, reset_reason
from daemon.core.targets import TargetAssembly
from daemon.core.train_step import StepModel, Trainer, TrainStepFailed
from daemon.settings import Settings

__all__ = ["KeyRef", "OnlineLearner", "StepModel", "TrainStepFailed"]

T = TypeVar("T")


class _OfTrainer(Generic[T]):
    """A learner attribute that is its `Trainer`'s attribute of the same name.

    The train step's counters live in `Trainer`; the runner, metrics, checkpoints and snapshots
    read (and restore) them as `learner.step`, `learner.untrained`, ... as before. Reading one
    first runs the steps queued so far, so a reader sees every closed batch trained. Ingest adds
    its untrained events and resets to the trainer's counters directly, without that.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, learner: OnlineLearner, owner: type | None = None) -> T:
        learner.run_queued_steps()
        return getattr(learner._trainer, self._name)

    def __set__(self, learner: OnlineLearner, value: T) -> None:
        learner.run_queued_steps()
        setattr(learner._trainer, self._name, value)


class OnlineLearner:
    """Keep every key's state in its partition's store and train one step per closed batch."""

    # What training did so far (see `Trainer`).
    step = _OfTrainer[int]()
    last_loss = _OfTrainer[float]()
    resets = _OfTrainer[Counter[str]]()  # state resets by reason, ingest's and periodic ones
    untrained = _OfTrainer[int]()  # events never trained: no target (sequence end), lost state
    trained_events = _OfTrainer[int]()  # timesteps trained on: each accepted event at most once
    prequential = _OfTrainer[Prequential]()  # since start: the demo's, the report's
    rolling = _OfTrainer[RollingPrequential]()
    interval_scores = _OfTrainer[IntervalScores]()  # coverage and interval score per level
    nonfinite_losses = _OfTrainer[int]()
    consecutive_nonfinite = _OfTrainer[int]()
    nonfinite_offsets = _OfTrainer[list[tuple[int, int]]]()  # the runner logs and clears it
    rows_filled = _OfTrainer[int]()  # keys in the last train step
    rows_filled_total = _OfTrainer[int]()
    step_seconds = _OfTrainer[list[float]]()  # drained by the runner into a histogram
    step_rows = _OfTrainer[list[int]]()  # likewise: keys filled per step

    def __init__(
        self, settings: Settings, model: StepModel, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._stream = settings.stream
        self._model = model
        self._clock = clock
        self.state_shape = model.state_shape
        self._layers, _, self.batch_size, self._units = model.state_shape
        self._window = settings.model.window
        self.input_names = input_names(settings)
        self.n_inputs = len(self.input_names)
        self.n_targets = settings.model.n_targets
        # Forecast mode: each forecast holds the next H values of each target, so the model's
        # outputs and the pending events' target columns are n_targets × H wide (target-major).
        self.horizon = settings.model.horizon
        self.target_width = self.n_targets * self.horizon
        self._target_index = np.array(settings.model.target_index, dtype=np.int64)
        self._scaling = EventScaling(settings)
        self._smoothed_target = settings.stream.target_scaling == "smoothed"
        self._stores: dict[int, KeyStateStore] = {}
        self._deferred = DeferredInputs()  # inputs normalised later, in rounds over keys
        self._outbox = Outbox(settings.stream.normalise, self.n_targets, self.horizon)
        self.stamp = 0  # events ingested: the recency clock of `stream.max_keys`
        self._keys = ReadyKeys(self._window, self.batch_size)  # which keys wait to train
        self._targets = TargetAssembly(
            self.n_targets, self.horizon, settings.stream.normalise, self._keys
        )
        self._forecaster = Forecaster(model, self._publish, self.n_inputs, self.target_width)
        self._trainer = Trainer(settings, model, self._forecaster, self._keys, self._outbox)

    # ---- stores -------------------------------------------------------------------------

    @property
    def stores(self) -> dict[int, KeyStateStore]:
        """Every partition's store, with every accepted event's inputs normalised and every
        closed batch trained."""
        self.run_queued_steps()
        return self._stores

    def store(self, partition: int) -> KeyStateStore:
        """Return a partition's store (created empty on first use), as `stores` does."""
        self.run_queued_steps()
        return self._store_for(partition)

    def new_store(self, partition: int) -> KeyStateStore:
        """Return an empty store of this learner's shape, not held by the learner."""
        return KeyStateStore(
            partition,
            self._layers,
            self._units,
            self.n_inputs,
            self.n_targets,
            derived=self.new_derived(),
            horizon=self.horizon,
            intervals=self.new_intervals(),
            smoothing=self.new_smoothing(),
        )

    def run_queued_steps(self) -> None:
        """Run the closed batches' queued steps (see `Trainer.train`), inputs normalised first.

        Raises:
            TrainStepFailed: the model raised; it or the keys' states may be half updated.
        """
        self._deferred.settle()
        if self._trainer.queued:
            self._trainer.run_queued(self._stores)

    def _store_for(self, partition: int) -> KeyStateStore:
        store = self._stores.get(partition)
        if store is None:
            store = self.new_store(partition)
            self._stores[partition] = store
        return store

    def new_derived(self) -> DerivedFeatures | None:
        """Return empty derived-feature columns for a new store (None when none are derived)."""
        return derived_for(self._settings, 0)

    def new_smoothing(self) -> SmoothedFeatures | None:
        """Return empty smoothed-feature state for a new store (None when off)."""
        derived = derived_for(self._settings, 0)
        return smoothing_for(self._settings, 0 if derived is None else derived.slots, 0)

    def new_intervals(self) -> IntervalCalibrator | None:
        """Return empty interval trackers for a new store (None when no levels are set)."""
        config = self._settings.intervals
        if not config.levels:
            return None
        return IntervalCalibrator(config.levels, self.target_width, config.rate, config.warmup)

    def keys_in_store(self) -> int:
        """Return how many keys all stores hold."""
        return sum(len(s) for s in self._stores.values())

    @property
    def infer_calls(self) -> int:
        """Return how many batched inference calls of their own forecasts took."""
        self.run_queued_steps()
        return self._forecaster.calls

    @property
    def infer_in_steps(self) -> int:
        """Return how many inference batches ran inside the train steps' calls instead."""
        self.run_queued_steps()
        return self._forecaster.in_step

    def mean_rows_filled(self) -> float:
        """Return the mean number of keys per train step since start (or restore)."""
        return self.rows_filled_total / self.step if self.step else 0.0

    def pending_events(self) -> int:
        """Return how many accepted events wait in all stores."""
        return sum(s.events.live for s in self.stores.values())

    def key_state(self, key: str) -> np.ndarray | None:
        """Return a key's [layers, 2, units] LSTM state from whichever store holds it."""
        for store in self.stores.values():
            state = store.state_of(key)
            if state is not None:
                return state
        return None

    def drop_partition(self, partition: int) -> None:
        """Forget a partition's store (it was revoked); its state was saved before."""
        self.run_queued_steps()
        if self._stores.pop(partition, None) is None:
            return
        self._keys.forget_partition(partition)
        self._forecaster.forget_partition(partition)
        self._keys.reopen(self._stores)

    # ---- ingest -------------------------------------------------------------------------

    def ingest(self, event: Event, partition: int, offset: int) -> Rejection | None:
        """Accept one decoded event; return a rejection if it goes back in time for its key.

        With `model.horizon` H > 1 an event that carries its own target is refused as well: it
        names one value per target where the model forecasts H.
        """
        if event.target is not None and self.horizon > 1:
            return Rejection(
                Reason.BAD_TARGET,
                f"model.horizon={self.horizon} forecasts from the key's own series; an event "
                "with its own target needs model.horizon=1 (or send it without target)",
            )
        store = self._store_for(partition)
        row = store.row_of.get(event.key)
        if row is None:
            if len(store) >= self._stream.max_keys:
                self._drop_least_recent(partition, store)
            row = store.add(event.key)
        elif event.ts < store.last_ts[row]:
            return Rejection(
                Reason.OUT_OF_ORDER, f"ts {event.ts} is before {store.last_ts[row]} for this key"
            )
        self.stamp += 1
        store.last_active[row] = self.stamp
        ref = (partition, row)
        reason = reset_reason(
            float(store.last_ts[row]), event.ts, event.reset, self._stream.reset_after_idle_s
        )
        if reason is not None:
            self._trainer.resets[reason] += 1
            self._end_sequence(store, ref)
        store.last_ts[row] = event.ts
        self._append(store, ref, event, offset, starts_sequence=reason is not None)
        self._close_if_due(store, ref)
        return None

    def _append(
        self, store: KeyStateStore, ref: KeyRef, event: Event, offset: int, starts_sequence: bool
    ) -> None:
        """Add an accepted event to its key's queue, and give earlier events their targets."""
        row = ref[1]
        level = event.features[self._target_index]
        features = self._scaling.inputs(store, row, event, level)
        forecast = event.target is None
        # The key's step statistics only: independent of its feature statistics and targets.
        step_spread = (
            self._scaling.step_spread(store, row, level, starts_sequence) if forecast else None
        )
        if store.prescaled:
            self._scaling.prescale(features, store.prescaled, step_spread)
        if not starts_sequence:
            self._targets.fill(store, ref, level)
        events = store.events
        e = events.new()
        target_scale = self._write_inputs(store, row, e, features, forecast, step_spread)
        events.ts[e] = event.ts
        events.offset[e] = offset
        events.received_at[e] = self._clock()
        flags = STARTS_SEQUENCE if starts_sequence else 0
        if forecast:
            location, spread = self._scaling.forecast_target(level, step_spread, target_scale)
            if self._smoothed_target and store.smoothing is not None:
                location = store.smoothing.base(row)
            self._targets.frame_forecast(events, e, level, location, spread)
            flags |= FORECAST_MODE | HAS_NAIVE | (COLD_SCALE if step_spread is None else 0)
            self._forecaster.wait(ref, e)
        else:
            scale = self._scaling.supervised_target(store, row)
            flags |= self._targets.frame_supervised(store, row, e, *scale)
            stats = store.target_stats
            flags |= COLD_SCALE if not stats.allocated or stats.count[row] < 2 else 0
        events.flags[e] = flags
        store.append(row, e)
        if event.target is not None:
            self._targets.given(store, ref, e, event.target)

    def _write_inputs(
        self,
        store: KeyStateStore,
        row: int,
        e: int,
        features: np.ndarray,
        forecast: bool,
        step_spread: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Defer normalising an event's inputs; return its target features' (location, spread)
        after it when its forecast's target is scaled by them, else None.

        Only a forecast without step statistics scales its target by its feature statistics.
        Those are read now, without folding (`StatsColumns.peek_fold`); the whole row folds
        later, in rounds with other keys' (`DeferredInputs`), to the same bits.
        """
        target_scale = None
        if forecast and step_spread is None:
            if self._deferred.holds(store, row):
                self._deferred.settle()  # the key's earlier events fold first
            target_scale = self._scaling.target_scale_after(store, row, features)
        if self._stream.normalise:
            self._deferred.defer(store, row, e, features)
        else:
            store.events.x[e] = features
        return target_scale

    def _end_sequence(self, store: KeyStateStore, ref: KeyRef) -> None:
        """Close a key's current sequence before an event that starts a new one.

        Its events short of their target (the newest one; with H > 1 the newest H − 1 or
        fewer too) never get it: they are answered, then dropped untrained.
        """
        self._deferred.settle()  # its events are released below: their inputs must not wait
        row = ref[1]
        events = store.events
        while True:
            tail = int(store.tail[row])
            if tail == NO_EVENT or events.flags[tail] & HAS_Y:
                return
            if not events.flags[tail] & ANSWERED:
                if ref in self._forecaster.waiting:
                    self.answer_forecasts()
                else:  # its forecast is laid in a queued step's call, which answers it
                    self.run_queued_steps()
            events.release(store.pop_last(row))
            self._trainer.untrained += 1

    def _drop_least_recent(self, partition: int, store: KeyStateStore) -> None:
        """Make room in a full store: drop its least recently active keys (1/256 at a time)."""
        victims = store.least_recent(max(1, self._stream.max_keys // 256))
        refs = [(partition, row) for row in victims]
        self.answer_forecasts()
        waiting = [r for r in refs if store.unanswered(r[1])]
        self._forecaster.answer_from_committed(self._stores, waiting)
        for ref in refs:
            for e in store.remove(ref[1]):
                store.events.release(e)
                self._trainer.untrained += 1
        self._keys.remove(refs)
        self._trainer.resets[ResetReason.DROPPED] += len(refs)
        self._keys.reopen(self._stores)

    # ---- batches ------------------------------------------------------------------------

    def _close_if_due(self, store: KeyStateStore, ref: KeyRef) -> None:
        """Run the steps the batch-close rule calls for after an event (DESIGN §4)."""
        if self._keys.opened_at is None and self._keys.ready:
            self._keys.reopen(self._stores)
        while (candidates := self._keys.due(store, ref)) is not None:
            self._train(candidates)

    def train(self) -> bool:
        """Close the batch now: one step over the B keys that have waited longest, run now.

        Returns:
            Whether a step ran (False when no key holds a trainable event).
        """
        trained = self._train(list(self._keys.ready))
        self.run_queued_steps()
        return trained

    def _train(self, candidates: list[KeyRef]) -> bool:
        """Close a batch over `candidates`; its step runs with the next call (`Trainer.train`)."""
        self._deferred.settle()  # the step, and the forecasts answered before it, read inputs
        return self._trainer.train(self._stores, candidates)

    # ---- predictions --------------------------------------------------------------------

    def answer_forecasts(self) -> int:
        """Publish the forecasts of events not yet answered (see `Forecaster`); how many.

        The queued steps run first: these forecasts come after them, and read their states.
        """
        self.run_queued_steps()  # inference reads the inputs too
        return self._forecaster.answer_waiting(self._stores)

    def flush_predictions(self, include_supervised: bool) -> int:
        """Publish predictions for pending events that await one; return how many.

        Forecasts always; supervised events only when `include_supervised` (before a snapshot
        that leaves, since their prediction normally comes from the train step).
        """
        answered = self.answer_forecasts()
        if include_supervised:
            waiting = [ref for ref in self._keys.ready if self._stores[ref[0]].unanswered(ref[1])]
            answered += self._forecaster.answer_from_committed(self._stores, waiting)
        return answered

    def _publish(
        self, store: KeyStateStore, rows: list[int], answered: list[int], normalised: np.ndarray
    ) -> None:
        """Queue the predictions of a store's answered events (see `Outbox.publish`)."""
        # The trainer's step as the answers are settled, not `self.step`, which runs the queue.
        self._outbox.publish(store, rows, answered, normalised, self._trainer.step)

    # ---- loop hooks ---------------------------------------------------------------------

    def end_of_poll(self) -> None:
        """Publish waiting forecasts, close batches that have waited long enough, and run every
        queued step: a poll's answers leave with it."""
        self.answer_forecasts()
        wait_ms = self._stream.max_batch_wait_ms
        while wait_ms and self._keys.opened_at is not None:
            due = (self._clock() - self._keys.opened_at) * 1000 >= wait_ms
            if not due or not self._train(list(self._keys.ready)):
                break
        self.run_queued_steps()

    def batch_due_in(self) -> float | None:
        """Return seconds until the wall-clock batch close (<= 0: due), or None if none is set."""
        wait_ms = self._stream.max_batch_wait_ms
        opened_at = self._keys.opened_at
        if not wait_ms or opened_at is None:
            return None
        return opened_at + wait_ms / 1000 - self._clock()

    def drain(self) -> None:
        """Train every trainable event and publish every waiting prediction."""
        while self._train(list(self._keys.ready)):
            pass
        self.flush_predictions(include_supervised=True)

    def take_outbox(self) -> list[Prediction]:
        """Return and clear the queued predictions (the queued steps run first)."""
        self.run_queued_steps()
        return self._outbox.take()

    def reset(self) -> None:
        """Forget everything learned and buffered: the state of a learner just built."""
        self.__init__(self._settings, self._model, self._clock)  # type: ignore[misc]

    def ready_keys(self) -> list[KeyRef]:
        """Return the keys with trainable events, longest waiting first."""
        return list(self._keys.ready)

    def full_keys(self) -> list[KeyRef]:
        """Return the keys holding a full window of trainable events, longest waiting first."""
        return list(self._keys.full)

    def adopt(
        self, stores: dict[int, KeyStateStore], ready: list[KeyRef], full: list[KeyRef]
    ) -> None:
        """Take restored stores and their keys' places in the wait lists."""
        self.run_queued_steps()
        self._stores.update(stores)
        self._keys.adopt(ready, full)
        for partition, store in stores.items():
            self._forecaster.adopt(partition, store)
        self._keys.reopen(self._stores)
