"""Smoothed features: cheap statistical forecasts per key, as inputs in the target's units. Pure.

An LSTM that learns every key's next change from normalised inputs has to work out, per key,
how a lag in that key's input units maps to a change in its target units: a column normalised by
its own running statistics loses the scale that relates it to the target. These features hand it
forecasts a statistician would make, already as changes from the key's current value in the
units its target is scaled by (the spread of its steps), so "output this feature" is one weight:

* for each seasonal lag slot m: the seasonal naive change, lag_m − y_t, and the change one season
  back, lag_m − the value before it (at m = 364 or 365: what last year's holiday did);
* seasonal naive with smoothed growth: lag_1 + g − y_t, where g is an exponentially smoothed
  mean of the key's seasonal differences y_t − y_{t−m} (rate GROWTH_RATE);
* two smoothed levels minus the value (rates FAST_RATE, SLOW_RATE): how far the value strayed;
* the smoothed step (rate DRIFT_RATE): the key's recent drift;
* the seasonal step profile: per phase of the key's first season, an exponentially smoothed mean
  of the steps into that phase over past seasons (rate PROFILE_RATE), read for the next value's
  phase: last season's step (above) is one noisy week, the profile is many (Holt-Winters'
  seasonal indices, on the key's changes).

Of six of these forecasts (naive, seasonal naive, seasonal naive with growth, the fast level, the
naive with drift, the value plus its profile step) each key keeps the one whose recent absolute
errors are lowest (an EWMA at CHOICE_RATE) as its *base*: with `stream.target_scaling =
"smoothed"` the model learns the next value's difference from it, so what it corrects is the
key's best cheap forecast, not its last value (the M4 winner's hybrid, ES-RNN, corrected
exponential smoothing the same way).

They skip the learner's feature normalisation (`prescaled` columns), are computed from the key's
values up to its event only, and cost 18 float64 and 52 float32 numbers of state per key and
target (about 350 bytes).
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
CHOICE_RATE = 0.1
PROFILE_RATE = 0.1
# The longest season a profile holds (a year of weeks); longer first seasons keep no profile.
MAX_PROFILE = 52
# A key's base stays the naive forecast until the candidates have this many errors each.
CHOICE_AFTER = 3
CANDIDATES = 6
# Per key and target: fast level, slow level, drift, growth, last value, last lag_1 (for growth),
# then the candidates' last forecasts and their error EWMAs.
_FIELDS = 6 + 2 * CANDIDATES
# The features beyond the seasonal ones.
_NAMES = (
    "smooth_seasonal_growth",
    "smooth_fast_level",
    "smooth_slow_level",
    "smooth_drift",
    "smooth_last_step",
    "smooth_profile_step",
    "smooth_base",
)


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
        width: Features per event: (2 × slots + 7) × n_targets, target-major.
        names: One name per feature.
    """

    def __init__(self, slots: int, n_targets: int, capacity: int) -> None:
        self.slots = slots
        self.n_targets = n_targets
        self.per_target = 2 * slots + len(_NAMES)
        self.width = self.per_target * n_targets
        seasonal = [f"smooth_seasonal_naive{s + 1}" for s in range(slots)]
        seasonal += [f"smooth_seasonal_step{s + 1}" for s in range(slots)]
        self.names = [f"{name}[{t}]" for t in range(n_targets) for name in seasonal + list(_NAMES)]
        self.capacity = 0
        # Per key and target: the smoothing state, each candidate's last forecast, and each
        # candidate's error EWMA (target-major: one target's numbers are contiguous).
        self._state = pages.zeros((0, n_targets, _FIELDS), np.float64)
        self._count = pages.zeros((0,), np.int64)
        # Per key and target the step profile of its first season (float32: a smoothed mean of
        # steps needs no more), and the season it was built for (0: none).
        self._profile = pages.zeros((0, n_targets, MAX_PROFILE), np.float32)
        self._profile_season = pages.zeros((0,), np.int64)
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Hold `capacity` rows: rows below the old capacity are kept, new rows are cleared."""
        for name in ("_state", "_count", "_profile", "_profile_season"):
            setattr(self, name, pages.grown(getattr(self, name)[: self.capacity], capacity))
        self.capacity = capacity

    def clear_row(self, row: int) -> None:
        """Forget a row (a new key, or a key dropped from the store)."""
        self._state[row] = 0.0
        self._count[row] = 0
        self._profile[row] = 0.0
        self._profile_season[row] = 0

    def observe_into(
        self,
        row: int,
        value: np.ndarray,
        lags: np.ndarray | None,
        steps: np.ndarray | None,
        season: int,
        out: np.ndarray,
    ) -> None:
        """Fold a key's new value in; write its features, in target units × spread, to `out`.

        Runs once per event: Python floats and one array write per target, not dozens of numpy
        calls on one-element arrays.

        Args:
            row: The key's row.
            value: The event's target value(s), [n_targets].
            lags: The key's seasonal lags for forecasting its next value, [slots, n_targets]
                (the derived features' lag columns), or None without seasonal lags.
            steps: Each lag minus the value before it, [slots, n_targets], then the key's last
                step, [n_targets] (the derived features' step columns); None without lags.
            season: m of the first lag slot (0: none yet): a seasonal difference needs m
                values before this one.
            out: [width] to fill: changes from `value`, still in target units (the caller
                divides them by the spread the target is scaled with).
        """
        count = int(self._count[row])
        self._count[row] = count + 1
        profile = self._profile_of(row, season)
        seasonal = lags is not None and steps is not None
        growing = seasonal and 0 < season <= count  # the last lag_1 was the value m back
        per = self.per_target
        for t in range(self.n_targets):
            y = float(value[t])
            state = self._state[row, t].tolist()
            fast, slow, drift, growth, last, last_lag = state[:6]
            profile_step = 0.0
            if count == 0:
                fast = slow = y
            else:
                if profile is not None:  # the step into this value's phase; then the next's
                    step_now = profile[t, count % season]
                    profile[t, count % season] = step_now + PROFILE_RATE * ((y - last) - step_now)
                    profile_step = float(profile[t, (count + 1) % season])
                drift += DRIFT_RATE * ((y - last) - drift)
                fast += FAST_RATE * (y - fast)
                slow += SLOW_RATE * (y - slow)
                if growing:
                    growth += GROWTH_RATE * ((y - last_lag) - growth)
                for c in range(CANDIDATES):  # how far each candidate's forecast of y was off
                    error = abs(y - state[6 + c])
                    e = 6 + CANDIDATES + c
                    state[e] += CHOICE_RATE * (error - state[e])
            if seasonal:
                assert lags is not None and steps is not None
                lag_values = lags[:, t].tolist()
                features = [lag - y for lag in lag_values] + steps[: self.slots, t].tolist()
                last_step = float(steps[self.slots, t])
                first_lag = lag_values[0]
            else:
                features = []
                last_step = 0.0 if count == 0 else y - last
                first_lag = y
            candidates = [y, first_lag, first_lag + growth, fast, y + drift, y + profile_step]
            errors = state[6 + CANDIDATES : 6 + 2 * CANDIDATES]
            best = 0 if count + 1 <= CHOICE_AFTER else errors.index(min(errors))
            features += [
                first_lag + growth - y,
                fast - y,
                slow - y,
                drift,
                last_step,
                profile_step,
                candidates[best] - y,
            ]
            out[t * per : (t + 1) * per] = features
            self._state[row, t] = [fast, slow, drift, growth, y, first_lag, *candidates, *errors]

    def base(self, row: int) -> np.ndarray:
        """Return the key's base forecast of its next value, [n_targets] (after `observe_into`)."""
        state = self._state[row]  # [n_targets, fields]
        if int(self._count[row]) <= CHOICE_AFTER:
            return state[:, 6].copy()
        best = np.argmin(state[:, 6 + CANDIDATES :], axis=1)
        return state[np.arange(self.n_targets), 6 + best]

    def _profile_of(self, row: int, season: int) -> np.ndarray | None:
        """Return the row's step profile for `season` ([n_targets, MAX_PROFILE]), or None.

        A key whose first season changes (its cadence was still being learnt) starts afresh.
        """
        if not 1 < season <= MAX_PROFILE:
            return None
        if int(self._profile_season[row]) != season:
            self._profile[row] = 0.0
            self._profile_season[row] = season
        return self._profile[row]

    # ---- snapshots ----------------------------------------------------------------------

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return copies of the given rows' arrays."""
        return {
            "state": self._state[rows],
            "count": self._count[rows],
            "profile": self._profile[rows],
            "profile_season": self._profile_season[rows],
        }

    def put(self, rows: np.ndarray, arrays: dict[str, Any]) -> None:
        """Write rows taken with `take` into the given rows.

        Raises:
            ValueError: An array is missing or does not fit these rows.
        """
        for name, array in (
            ("state", self._state),
            ("count", self._count),
            ("profile", self._profile),
            ("profile_season", self._profile_season),
        ):
            given = np.asarray(arrays[name])
            if given.shape[1:] != array.shape[1:] or len(given) != len(rows):
                raise ValueError(
                    f"smoothing {name}: shape {given.shape} does not fit {len(rows)} rows of "
                    f"{array.shape[1:]}; was it saved with other settings?"
                )
            array[rows] = given
