"""From an event to the model's numbers: derived features, then per-key normalisation. Pure.

Every number a key's event becomes is computed from that key's own history in its store (its
derived-feature history and its running statistics) as of that event, so nothing leaks from
later events; what a target is normalised with is frozen at ingest and published back with it.
"""

from __future__ import annotations

import math

import numpy as np

from daemon.core.events import Event
from daemon.core.store import KeyStateStore
from daemon.settings import Settings


class EventScaling:
    """Turn events into normalised model inputs and targets, per key (DESIGN §3)."""

    def __init__(self, settings: Settings) -> None:
        self._stream = settings.stream
        self._target_index = np.array(settings.model.target_index, dtype=np.int64)
        self._target_columns = list(settings.model.target_index)

    def inputs(self, store: KeyStateStore, row: int, event: Event, level: np.ndarray) -> np.ndarray:
        """Return the event's features followed by the key's derived features (DESIGN §3).

        Forecast mode: the key's history takes this event's value first, since the forecast is
        for the value after it. Supervised: the features describe this event's own target,
        whose value joins the history only after.

        Args:
            level: The event's target features, `event.features[target_index]` (the caller
                has them already).
        """
        derived, smoothing = store.derived, store.smoothing
        if derived is None and smoothing is None:
            return event.features
        size = len(event.features)
        width = 0 if derived is None else derived.width
        out = np.empty(size + width + store.prescaled, np.float64)
        out[:size] = event.features
        if derived is not None:
            if event.target is None:
                derived.observe(row, event.ts, level)
                derived.derive_into(row, out, size)
            else:
                derived.derive_into(row, out, size, event.ts - derived.cadence(row))
                derived.observe(row, event.ts, event.target)
        if smoothing is not None:
            tail = out[size + width :]
            if event.target is None:
                self._smooth(store, row, level, out[size:], tail)
            else:
                tail[:] = 0.0  # forecasts of the next value: not a supervised event's
        return out

    def _smooth(
        self,
        store: KeyStateStore,
        row: int,
        level: np.ndarray,
        derived: np.ndarray,
        out: np.ndarray,
    ) -> None:
        """Fold the event into its key's smoothing; write the smoothed features to `out`."""
        smoothing, lags_of = store.smoothing, store.derived
        assert smoothing is not None  # the caller checked
        if lags_of is None or not lags_of.slots:
            smoothing.observe_into(row, level, None, None, 0, out)
            return
        n = len(level)
        start = lags_of.lag_offset()
        end = start + smoothing.slots * n
        lags = derived[start:end].reshape(smoothing.slots, n)
        steps = derived[end : end + (smoothing.slots + 1) * n].reshape(smoothing.slots + 1, n)
        smoothing.observe_into(row, level, lags, steps, lags_of.first_season(row), out)

    def prescale(self, features: np.ndarray, count: int, spread: np.ndarray | None) -> None:
        """Divide the last `count` inputs (changes in target units) by the target's spread.

        Without a spread of the key's steps yet (its first events) they are 0: a change in
        unknown units says nothing.
        """
        tail = features[len(features) - count :]
        if spread is None:
            tail[:] = 0.0
            return
        n = len(spread)
        tail.reshape(n, -1)[...] /= spread[:, None]

    def step_spread(
        self, store: KeyStateStore, row: int, level: np.ndarray, starts_sequence: bool
    ) -> np.ndarray | None:
        """Forecast mode: fold the event's step into its key's; return what scales its target.

        "difference" scaling, once the key has two steps: the spread of its steps. None when
        the key's feature statistics decide instead ("level" scaling, no normalisation, or
        fewer than two steps); see `forecast_target`.
        """
        if self._stream.target_scaling == "level":
            return None
        last = store.last_level[row]
        steps = store.step_stats
        spread: np.ndarray | None = None
        if not math.isnan(last[0]) and not starts_sequence:
            if len(level) == 1:  # one target: Python floats, the same IEEE operations
                spread = np.array([steps.fold_one(row, float(level[0]) - float(last[0]))[1]])
            else:
                spread = steps.fold(row, level - last)[1]
        elif steps.count[row] >= 2:
            spread = steps.scale(row)[1]
        store.last_level[row] = level
        if self._stream.normalise and spread is not None and steps.count[row] >= 2:
            return spread
        return None

    def target_scale_after(
        self, store: KeyStateStore, row: int, features: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the target features' (location, spread) once the event's inputs are folded.

        Without normalisation: (0, 1). Otherwise read without folding (`peek_fold`); the row
        itself folds later.
        """
        if not self._stream.normalise:
            size = len(self._target_columns)
            return np.zeros(size), np.ones(size)
        values = features[self._target_index].tolist()
        return store.feature_stats.peek_fold(row, self._target_columns, values)

    def forecast_target(
        self,
        level: np.ndarray,
        step_spread: np.ndarray | None,
        target_scale: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return how the next value of this key's target features will be normalised.

        "level": by the key's running mean and spread of those features. "difference": around
        the current value, by the spread of the key's steps (`step_spread`), so the model learns
        the change and an untrained model forecasts the last value.

        Args:
            level: The event's target features.
            step_spread: What `step_spread` returned for the event.
            target_scale: The target features' (location, spread) after the event
                (`target_scale_after`); None when `step_spread` decides.

        Raises:
            ValueError: The feature statistics are needed but were not given.
        """
        if step_spread is not None:
            return level, step_spread
        if target_scale is None:
            raise ValueError("the target's feature statistics are needed but were not given")
        location, spread = target_scale
        if self._stream.target_scaling == "level":
            return location, spread
        return level, spread

    def supervised_target(self, store: KeyStateStore, row: int) -> tuple[np.ndarray, np.ndarray]:
        # Scale from the targets seen before this one: this event's own target must not leak
        # into the denormalised prediction published for it.
        return store.target_stats.scale(row)
