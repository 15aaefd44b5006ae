"""Derived features: calendar of the forecast's target time and seasonal lags, per key.

Pure numpy. Each key owns one row of contiguous arrays (the key-state store hands out the row
numbers and grows capacity), holding the key's recent inter-event gaps (for its cadence), its
last event time and a ring of its recent target values (for the lags). `observe` folds one event
in; `derive` returns the features for forecasting the key's *next* value from what has been
observed so far, so a forecast never uses anything after its event.

With the lags come steps, so a model of the key's changes (difference target scaling) sees the
changes a seasonal ARIMA differences out: for each season m, the step into the value m before
the target (its value minus the one before it: "what happened at this time last season"), and
the key's latest step. A recurrent model could work them out from consecutive lags, but truncated
backpropagation over T events learns that slowly; given explicitly they cut the one-step MAE by
39% on elecdemand and 44% on us_employment (README, Forecast quality).

Calendar features are sin/cos pairs of time of day, day of week and day of year of the target
time, which is the last event time plus the key's cadence (the median of its recent gaps). Times
are UTC. Day of year uses the mean Gregorian year (365.2425 days) counted from 1970-01-01, so it
drifts by less than a day against the civil calendar, which a sin/cos pair does not notice.

>>> derived = DerivedFeatures(seasons=(2,), calendar=False, n_targets=1, capacity=4)
>>> for ts, value in [(0.0, 10.0), (60.0, 20.0), (120.0, 30.0)]:
...     derived.observe(0, ts, np.array([value]))
>>> derived.derive(0).tolist()  # lag 2: the value 2 before the next; its step; the last step
[20.0, 10.0, 10.0]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from daemon.core import pages
from daemon.settings import Settings

MINUTE_S = 60.0
HOUR_S = 3_600.0
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
YEAR_S = 365.2425 * DAY_S  # the mean Gregorian year
MONTH_S = YEAR_S / 12

# Seasons (in events of one key) picked for a key when `seasons` is "auto", by its cadence. A
# cadence matches an entry when it lies within CADENCE_TOLERANCE of it (months vary 28-31 days).
SEASONS_BY_CADENCE: dict[float, tuple[int, ...]] = {
    30 * MINUTE_S: (48, 336),  # a day, a week of half hours
    HOUR_S: (24, 168),  # a day, a week of hours
    # A week; a year of whole weeks (the same weekday last year: weekly habits and holidays
    # that fall on a weekday); a year of days (the same date: fixed-date holidays). 364 next to
    # 365 took Birthdays from 13.23 to 13.01.
    DAY_S: (7, 364, 365),
    WEEK_S: (52,),  # a year of weeks
    MONTH_S: (12,),  # a year of months
}
CADENCE_TOLERANCE = 0.15  # relative; a 31-day gap is 1.9% off the mean month
# Lag slots in auto mode: the most seasons any cadence has; an unused slot repeats the last value.
AUTO_SLOTS = max(len(s) for s in SEASONS_BY_CADENCE.values())
# Gaps in the running median of a key's cadence: enough to outvote a few missing or repeated
# events, few enough that the median is a sort of 15 numbers on the hot path.
CADENCE_GAPS = 15
CALENDAR_NAMES = ("tod_sin", "tod_cos", "dow_sin", "dow_cos", "doy_sin", "doy_cos")
# 1970-01-01 was a Thursday: shift so that Monday 00:00 is phase 0 of the week.
_MONDAY_OFFSET_S = 3 * DAY_S
_TWO_PI = 2.0 * math.pi
# (first output index, period in seconds, phase offset in seconds) of each sin/cos pair.
_CALENDAR_PERIODS = ((0, DAY_S, 0.0), (2, WEEK_S, _MONDAY_OFFSET_S), (4, YEAR_S, 0.0))


def seasons_for_cadence(cadence_s: float) -> tuple[int, ...]:
    """Return the seasons of the cadence class `cadence_s` falls in, or () for none."""
    for nominal, seasons in SEASONS_BY_CADENCE.items():
        if abs(cadence_s - nominal) <= CADENCE_TOLERANCE * nominal:
            return seasons
    return ()


def calendar_features(target_ts: float, cadence_s: float, out: np.ndarray) -> None:
    """Write the 6 calendar features of `target_ts` into `out`, zero where they do not vary.

    A component varies at a cadence shorter than its period (time of day under a day, and so
    on); at a longer cadence every event would see (nearly) the same phase, so it is 0.

    Args:
        target_ts: The forecast's target time, epoch seconds (UTC).
        cadence_s: The key's cadence in seconds; 0 (unknown) gives all zeros.
        out: Six floats to fill.
    """
    out[:6] = _calendar_values(target_ts, cadence_s)


def _calendar_values(target_ts: float, cadence_s: float) -> list[float]:
    # Python floats, one slice write by the caller: six numpy item writes cost more than the trig.
    values = [0.0] * 6
    if cadence_s <= 0.0:
        return values
    for index, period, offset in _CALENDAR_PERIODS:
        if cadence_s < period * (1 - CADENCE_TOLERANCE):
            angle = _TWO_PI * (((target_ts + offset) % period) / period)
            values[index] = math.sin(angle)
            values[index + 1] = math.cos(angle)
    return values


class DerivedFeatures:
    """Per-key calendar features and seasonal lags, as rows of contiguous arrays.

    Attributes:
        seasons: The configured seasons, or None for "auto" (per key, from its cadence).
        calendar: Whether the 6 calendar features lead the derived features.
        n_targets: Values per observed target.
        capacity: Rows held.
        slots: Lag slots per target (auto: AUTO_SLOTS).
        longest: L, the history ring's length: the longest lag in use, plus one for its step.
        width: Derived features per event: 6 × calendar + (2 × slots + 1) × n_targets (each
            slot's lag and step, then the last step).
        names: One name per derived feature, in order.
    """

    def __init__(
        self, seasons: tuple[int, ...] | None, calendar: bool, n_targets: int, capacity: int
    ) -> None:
        if seasons is not None and any(m < 1 for m in seasons):
            raise ValueError(f"seasons must be >= 1, got {list(seasons)}")
        if n_targets < 1 or capacity < 0:
            raise ValueError(f"need n_targets >= 1 and capacity >= 0, got {n_targets}, {capacity}")
        self.seasons = None if seasons is None else tuple(seasons)
        self.calendar = calendar
        self.n_targets = n_targets
        self.capacity = 0
        self.slots = AUTO_SLOTS if seasons is None else len(seasons)
        all_seasons = [m for s in SEASONS_BY_CADENCE.values() for m in s]
        self.longest = max(all_seasons if seasons is None else seasons, default=1) + 1
        self._lag_width = (2 * self.slots + 1) * n_targets if self.slots else 0
        self.width = (len(CALENDAR_NAMES) if calendar else 0) + self._lag_width
        self.names = self._names()
        self._arrays: dict[str, np.ndarray] = self._empty(0)
        self.grow(capacity)

    def _names(self) -> list[str]:
        names = list(CALENDAR_NAMES) if self.calendar else []
        labels = (
            [f"lag_auto{slot + 1}" for slot in range(self.slots)]
            if self.seasons is None
            else [f"lag_{m}" for m in self.seasons]
        )
        if not labels:
            return names
        labels += [f"step_{label[4:]}" for label in labels] + ["step_last"]
        return names + [f"{label}[{t}]" for label in labels for t in range(self.n_targets)]

    def _empty(self, capacity: int) -> dict[str, np.ndarray]:
        # Zero pages (core/pages.py): the spare rows of a doubling cost no RSS until used.
        return {
            "history": pages.zeros((capacity, self.longest, self.n_targets), np.float32),
            "count": pages.zeros((capacity,), np.int64),  # values seen; ring position = count % L
            "last_ts": pages.zeros((capacity,), np.float64),
            "gaps": pages.zeros((capacity, CADENCE_GAPS), np.float64),
            "gap_count": pages.zeros((capacity,), np.int64),
            "cadence": pages.zeros((capacity,), np.float64),  # seconds; 0 = not known yet
            "lags": pages.zeros(
                (capacity, self.slots), np.int64
            ),  # per slot its season; 0 = unused
        }

    def _bind(self) -> None:
        # Attribute lookups on the hot path: bind the arrays once per (re)allocation.
        a = self._arrays
        self._history, self._count, self._last_ts = a["history"], a["count"], a["last_ts"]
        self._gaps, self._gap_count, self._cadence = a["gaps"], a["gap_count"], a["cadence"]
        self._lags = a["lags"]
        # derive_into's steps of one target, rounded to float32 as the ring's own differences.
        self._steps32 = np.empty(self.slots + 1, np.float32)

    def grow(self, capacity: int) -> None:
        """Hold `capacity` rows: rows below the old capacity are kept, new rows are cleared."""
        if capacity < self.capacity:
            raise ValueError(f"capacity can only grow: {self.capacity} -> {capacity}")
        old = self.capacity
        grown = self._empty(capacity)
        for name, array in self._arrays.items():
            grown[name][:old] = array
        if self.seasons is not None:
            grown["lags"][old:] = self.seasons
        self._arrays, self.capacity = grown, capacity
        self._bind()

    def clear_row(self, row: int) -> None:
        """Forget a row's history: a new key, or a key dropped from the store."""
        for array in self._arrays.values():
            array[row] = 0
        if self.seasons is not None:
            self._lags[row] = self.seasons

    def observe(self, row: int, ts: float, value: np.ndarray) -> None:
        """Fold one event of the row's key in: its time and its target value(s).

        Args:
            row: The key's row.
            ts: The event time, epoch seconds, not before the key's previous one.
            value: The event's target value(s), `n_targets` numbers (forecast mode: the
                forecast features).
        """
        count = int(self._count[row])
        if count:
            gap = ts - float(self._last_ts[row])
            if gap > 0.0:  # repeated times say nothing about the cadence
                self._add_gap(row, gap)
        self._last_ts[row] = ts
        self._history[row, count % self.longest] = value
        self._count[row] = count + 1

    def _add_gap(self, row: int, gap: float) -> None:
        filled = int(self._gap_count[row])
        gaps = self._gaps[row]
        slot = filled % CADENCE_GAPS
        evicted = float(gaps[slot]) if filled >= CADENCE_GAPS else math.nan
        gaps[slot] = gap
        self._gap_count[row] = filled + 1
        cadence = float(self._cadence[row])
        if gap == cadence and evicted == cadence:
            return  # the same multiset of gaps: the median stands (the common, regular case)
        ordered = sorted(gaps[: min(filled + 1, CADENCE_GAPS)].tolist())
        middle = len(ordered) // 2
        median = (
            ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
        )
        self._cadence[row] = median
        if self.seasons is None and median != cadence:
            seasons = seasons_for_cadence(median)
            self._lags[row] = 0
            self._lags[row, : len(seasons)] = seasons

    def lag_offset(self) -> int:
        """Return where the lag columns start in the derived features ([slots, n_targets])."""
        return len(CALENDAR_NAMES) if self.calendar else 0

    def first_season(self, row: int) -> int:
        """Return the season of the row's first lag slot (0: none yet)."""
        return int(self._lags[row, 0]) if self.slots else 0

    def cadence(self, row: int) -> float:
        """Return the row's cadence in seconds (0 until it has two events at distinct times)."""
        return float(self._cadence[row])

    def derive(self, row: int, ts: float | None = None) -> np.ndarray:
        """Return the derived features for forecasting the row's next value, float64 [width].

        Calendar: of the target time, the last event time plus the cadence (all 0 until the
        cadence is known). Lag m: the value m steps before the one being predicted, i.e. the m-th
        most recent observed value; the most recent one while fewer than m are observed (seasonal
        naive falls back to naive), 0 before any. An unused auto slot holds the most recent value.
        Step m: lag m minus the value before it (0 until m + 1 values are observed; an unused
        auto slot holds the last step). The last step: the most recent value minus the one
        before it (0 until two are observed).
        """
        out = np.empty(self.width, np.float64)
        self.derive_into(row, out, 0, ts)
        return out

    def derive_into(self, row: int, out: np.ndarray, start: int, ts: float | None = None) -> None:
        """Write what `derive` returns into `out[start : start + width]` (no new array)."""
        # Runs once per event: Python floats and at most three array writes, not a dozen numpy
        # calls on 1-8 element arrays. The steps are float32 differences, as before: the float64
        # difference of two float32 values rounded once to float32 is the float32 difference
        # (double rounding is innocuous for p' >= 2p + 2), so the numbers are bit-identical.
        values = (
            _calendar_values(self._target_ts(row, ts), float(self._cadence[row]))
            if self.calendar
            else []
        )
        count = int(self._count[row])
        if not self.slots or count == 0:
            values += [0.0] * (self._lag_width if count == 0 else 0)
            out[start : start + len(values)] = values
            return
        lags = self._lags[row].tolist()
        backs = [lag if 0 < lag <= count else 1 for lag in lags]
        step_backs = [lag or 1 for lag in lags] + [1]
        if self.n_targets == 1:
            self._lags_one(row, count, backs, step_backs, values, out, start)
            return
        out[start : start + len(values)] = values
        start += len(values)
        n, longest = self.n_targets, self.longest
        history = self._history[row]
        # One gather of the ring's rows for every slot: [slots, n_targets] in slot order.
        lag_end = start + len(backs) * n
        out[start:lag_end] = history[[(count - back) % longest for back in backs]].ravel()
        # Steps: each slot's (an unused auto slot repeats the last step), then the last step.
        steps = (
            history[[(count - back) % longest for back in step_backs]]
            - history[[(count - back - 1) % longest for back in step_backs]]
        )
        steps[[back >= count for back in step_backs]] = 0.0  # not observed yet
        out[lag_end : start + self._lag_width] = steps.ravel()

    def _target_ts(self, row: int, ts: float | None) -> float:
        """Return the forecast's target time: `ts` (or the last event time) plus the cadence."""
        now = float(self._last_ts[row]) if ts is None else ts
        return now + float(self._cadence[row])

    def _lags_one(
        self,
        row: int,
        count: int,
        backs: list[int],
        step_backs: list[int],
        values: list[float],
        out: np.ndarray,
        start: int,
    ) -> None:
        """`derive_into`'s lags and steps for one target value per event, in Python floats."""
        longest = self.longest
        ring = self._history[row, :, 0]
        values += [ring.item((count - back) % longest) for back in backs]
        steps = self._steps32
        steps[:] = [
            ring.item((count - back) % longest) - ring.item((count - back - 1) % longest)
            if back < count
            else 0.0  # not observed yet
            for back in step_backs
        ]
        lag_end = start + len(values)
        out[start:lag_end] = values
        out[lag_end : lag_end + len(steps)] = steps

    # ---- snapshots ----------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return every row and the configuration as arrays, for an `.npz` snapshot."""
        arrays = {name: array.copy() for name, array in self._arrays.items()}
        arrays["config_seasons"] = np.asarray(
            [] if self.seasons is None else self.seasons, np.int64
        )
        arrays["config_flags"] = np.asarray(
            [self.seasons is None, self.calendar, self.n_targets], np.int64
        )
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> DerivedFeatures:
        """Rebuild from `to_arrays` output, exactly.

        Raises:
            ValueError: The arrays do not describe a DerivedFeatures (missing or misshapen).
        """
        try:
            auto, calendar, n_targets = (int(v) for v in arrays["config_flags"])
            seasons = None if auto else tuple(int(m) for m in arrays["config_seasons"])
            derived = cls(seasons, bool(calendar), n_targets, len(arrays["count"]))
            derived.put(np.arange(derived.capacity), arrays)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"derived-feature arrays do not load: {exc}") from None
        return derived

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return copies of the given rows' arrays (e.g. the keys of one partition)."""
        return {name: array[rows] for name, array in self._arrays.items()}

    def put(self, rows: np.ndarray, arrays: dict[str, Any]) -> None:
        """Write rows taken with `take` (or `to_arrays`) into the given rows.

        Raises:
            ValueError: An array is missing or has the wrong shape for these rows.
        """
        for name, array in self._arrays.items():
            given = np.asarray(arrays[name])
            if given.shape[1:] != array.shape[1:] or len(given) != len(rows):
                raise ValueError(
                    f"{name}: shape {given.shape} does not fit {len(rows)} rows of "
                    f"{array.shape[1:]}; was it saved with other derived-feature settings?"
                )
            array[rows] = given


def derived_for(settings: Settings, capacity: int) -> DerivedFeatures | None:
    """Return the derived features the settings ask for, or None when they ask for none."""
    stream = settings.stream
    derived = DerivedFeatures(
        stream.seasons_tuple(), stream.derived_calendar, settings.model.n_targets, capacity
    )
    return derived if derived.width else None


def input_names(settings: Settings) -> list[str]:
    """Return the names of the model's inputs: the event's features, the derived ones, then the
    smoothed ones (`daemon.core.smoothing`)."""
    from daemon.core.smoothing import smoothing_for

    derived = derived_for(settings, 0)
    raw = [f"feature[{i}]" for i in range(settings.model.n_features)]
    smoothing = smoothing_for(settings, 0 if derived is None else derived.slots, 0)
    return (
        raw
        + ([] if derived is None else derived.names)
        + ([] if smoothing is None else smoothing.names)
    )
