"""Smoothed features: cheap statistical forecasts per key, as inputs in the target's units. Pure.

An LSTM that learns every key's next change from normalised inputs has to work out, per key,
how a lag in that key's input units maps to a change in its target units: a column normalised by
its own running statistics loses the scale that relates it to the target. These features hand it
forecasts a statistician would make, already as changes from the key's current value in the
units its target is scaled by (the spread of its steps), so "output this feature" is one weight:

* for each seasonal lag slot m: the seasonal naive change, lag_m − y_t;
* seasonal naive with smoothed growth: lag_1 + g − y_t, where g is an exponentially smoothed
  mean of the key's seasonal differences y_t − y_{t−m} (rate GROWTH_RATE);
* two smoothed levels minus the value (rates FAST_RATE, SLOW_RATE): how far the value strayed;
* the smoothed step (rate DRIFT_RATE): the key's recent drift.

They skip the learner's feature normalisation (`prescaled` columns), are computed from the key's
values up to its event only, and cost five float64 numbers of state per key and target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from daemon.core import pages
from daemon.settings import Settings

FAST_RATE = 0.5
SLOW_RATE = 0.1
DRIFT_RATE = 0.1
GROWTH_RATE = 0.1
# Per key and target: fast level, slow level, drift, growth, last value, last lag_1 (for growth),
# values seen.
_STATE = ("fast", "slow", "drift", "growth", "last", "last_lag")
# The features beyond the seasonal naive changes.
_NAMES = ("smooth_seasonal_growth", "smooth_fast_level", "smooth_slow_level", "smooth_drift")


def smoothing_for(settings: Settings, slots: int, capacity: int) -> SmoothedFeatures | None:
    """Return the smoothing state the settings ask for (forecast features), or None."""
    if not settings.stream.derived_smoothing:
        return None
    return SmoothedFeatures(slots, settings.model.n_targets, capacity)


class SmoothedFeatures:
    """Per-key smoothing state, rows of contiguous arrays, and the features it gives.

    Attributes:
        slots: Seasonal lag slots the derived features carry (each gives a seasonal naive).
        n_targets: Values per observed target.
        width: Features per event: (slots + 4) × n_targets, target-major.
        names: One name per feature.
    """

    def __init__(self, slots: int, n_targets: int, capacity: int) -> None:
        self.slots = slots
        self.n_targets = n_targets
        self.per_target = slots + len(_NAMES)
        self.width = self.per_target * n_targets
        self.names = [
            f"{name}[{t}]"
            for t in range(n_targets)
            for name in [f"smooth_seasonal_naive{s + 1}" for s in range(slots)] + list(_NAMES)
        ]
        self.capacity = 0
        self._state = pages.zeros((0, len(_STATE), n_targets), np.float64)
        self._count = pages.zeros((0,), np.int64)
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Hold `capacity` rows: rows below the old capacity are kept, new rows are cleared."""
        self._state = pages.grown(self._state[: self.capacity], capacity)
        self._count = pages.grown(self._count[: self.capacity], capacity)
        self.capacity = capacity

    def clear_row(self, row: int) -> None:
        """Forget a row (a new key, or a key dropped from the store)."""
        self._state[row] = 0.0
        self._count[row] = 0

    def observe_into(
        self,
        row: int,
        value: np.ndarray,
        lags: np.ndarray | None,
        season: int,
        out: np.ndarray,
    ) -> None:
        """Fold a key's new value in; write its features, in target units × spread, to `out`.

        Args:
            row: The key's row.
            value: The event's target value(s), [n_targets].
            lags: The key's seasonal lags for forecasting its next value, [slots, n_targets]
                (the derived features' lag columns), or None without seasonal lags.
            season: m of the first lag slot (0: none yet): a seasonal difference needs m
                values before this one.
            out: [width] to fill: changes from `value`, still in target units (the caller
                divides them by the spread the target is scaled with).
        """
        state, count = self._state[row], int(self._count[row])
        fast, slow, drift, growth, last, last_lag = state  # views of the row: [n_targets] each
        if count == 0:
            fast[:], slow[:] = value, value
        else:
            drift += DRIFT_RATE * ((value - last) - drift)
            fast += FAST_RATE * (value - fast)
            slow += SLOW_RATE * (value - slow)
            if lags is not None and 0 < season <= count:  # last_lag was the value m back
                growth += GROWTH_RATE * ((value - last_lag) - growth)
        last[:] = value
        first_lag = value if lags is None else lags[0]
        last_lag[:] = first_lag
        self._count[row] = count + 1
        laid = out.reshape(self.n_targets, self.per_target)
        if lags is not None:
            laid[:, : self.slots] = (lags - value).T
        laid[:, self.slots] = first_lag + growth - value
        laid[:, self.slots + 1] = fast - value
        laid[:, self.slots + 2] = slow - value
        laid[:, self.slots + 3] = drift

    # ---- snapshots ----------------------------------------------------------------------

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return copies of the given rows' arrays."""
        return {"state": self._state[rows], "count": self._count[rows]}

    def put(self, rows: np.ndarray, arrays: dict[str, Any]) -> None:
        """Write rows taken with `take` into the given rows.

        Raises:
            ValueError: An array is missing or does not fit these rows.
        """
        for name, array in (("state", self._state), ("count", self._count)):
            given = np.asarray(arrays[name])
            if given.shape[1:] != array.shape[1:] or len(given) != len(rows):
                raise ValueError(
                    f"smoothing {name}: shape {given.shape} does not fit {len(rows)} rows of "
                    f"{array.shape[1:]}; was it saved with other settings?"
                )
            array[rows] = given
