"""One LightGBM over every key, refit on a schedule of global event time: the M5-style anchor.

Each event *t* of a key becomes one row: its latest values and seasonal lags divided by the key's
recent level, that level, the calendar of the forecast's target time and the event's other
(exogenous) features. The target is the next value's change, in the same scaled units, so the
trees never have to extrapolate a level. Every R periods of event time (R × the cadence) the
model is refitted on every row whose target had arrived before the refit, over all keys: no key
learns from another key's future. Rows before the first fit are answered by seasonal naive.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from daemon.core.derived import DAY_S, WEEK_S, YEAR_S
from daemon.evaluation.anchors import (
    AnchorRun,
    cadence_s,
    key_positions,
    refit_every,
    seasonal_naive_fill,
)
from daemon.evaluation.stream import Stream

# Lags of the latest values: one season, at most this many (longer seasons come in as lags).
MAX_RECENT_LAGS = 14
# The first fit waits for this many rows with a known target.
MIN_ROWS = 200
# LightGBM's configuration, named in full in every report.
GBM_PARAMS: dict[str, Any] = {
    "objective": "l2",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "num_threads": 1,
    "verbose": -1,
}
GBM_ROUNDS = 300


class GlobalGbmAnchor:
    """Run one global LightGBM over a stream, refitted every R periods of event time.

    Args:
        season: m.
        refit: R in periods (cadences); None picks whole seasons for about TARGET_REFITS refits
            over the stream's span.
        seed: LightGBM's seed.
        params: LightGBM parameters over GBM_PARAMS.
        rounds: Boosting rounds (trees).
    """

    def __init__(
        self,
        season: int,
        refit: int | None = None,
        seed: int = 0,
        params: dict[str, Any] | None = None,
        rounds: int = GBM_ROUNDS,
    ) -> None:
        self.season = season
        self.refit = refit
        self.seed = seed
        self.params = {**GBM_PARAMS, **(params or {}), "seed": seed}
        self.rounds = rounds

    def describe(self, refit: int, features: int) -> str:
        """Name the configuration in full."""
        p = self.params
        return (
            f"LightGBM global ({p['objective']}, {self.rounds} trees, lr "
            f"{p['learning_rate']:g}, {p['num_leaves']} leaves, min_data_in_leaf "
            f"{p['min_data_in_leaf']}) on {features} features: {self.lag_count()} latest values, "
            f"seasonal lags m, 2m, m+1, level, calendar, exogenous, all scaled by the key's "
            f"mean over its last {self.season} values; target the scaled next change; refit "
            f"every {refit} periods of event time on all rows known before; seasonal naive "
            f"before {MIN_ROWS} rows"
        )

    def lag_count(self) -> int:
        """Return how many of a key's latest values are features."""
        return min(self.season, MAX_RECENT_LAGS)

    def run(self, stream: Stream, feature_index: int = 0) -> AnchorRun:
        """Forecast every event's next value; return the forecasts and costs.

        Args:
            stream: The decoded events.
            feature_index: Which of each event's features is the target (the rest are
                exogenous features).
        """
        import lightgbm  # the `eval` extra

        started = time.perf_counter()
        rows, target, scale, target_at = self._rows(stream, feature_index)
        cadence = cadence_s(stream)
        span = (stream.ts.max() - stream.ts.min()) / cadence if len(stream.ts) else 0.0
        refit = self.refit or refit_every(self.season, max(1, math.ceil(span)))
        boundaries = _refit_positions(stream.ts, refit * cadence)
        forecasts = np.full((len(stream.keys), 1), np.nan)
        fit_seconds, fits, model = 0.0, 0, None
        edges = [*boundaries.tolist(), len(stream.keys)]
        for first, last in zip([0, *edges[:-1]], edges, strict=True):
            known = np.flatnonzero(target_at < first)  # rows whose target arrived before
            if first > 0 and known.size >= MIN_ROWS:
                began = time.perf_counter()
                data = lightgbm.Dataset(rows[known], target[known])
                model = lightgbm.train(self.params, data, num_boost_round=self.rounds)
                fit_seconds += time.perf_counter() - began
                fits += 1
            if model is not None and last > first:
                change = model.predict(rows[first:last])
                forecasts[first:last, 0] = stream.values[first:last] + change * scale[first:last]
        seasonal_naive_fill(forecasts, stream, self.season)
        return AnchorRun(
            forecasts,
            time.perf_counter() - started,
            fit_seconds,
            fits,
            self.describe(refit, rows.shape[1]),
        )

    def _rows(
        self, stream: Stream, feature_index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return per event its feature row, scaled target, scale and its target's position.

        Every feature of event t comes from the key's values up to t and t's own features.
        """
        n, m, lags = len(stream.keys), self.season, self.lag_count()
        features = np.asarray(stream.features, np.float64)
        exogenous = np.delete(features, feature_index, axis=1) if features.ndim == 2 else None
        calendar = _calendar(stream.ts, cadence_s(stream))
        width = lags + 3 + 1 + calendar.shape[1] + (0 if exogenous is None else exogenous.shape[1])
        rows = np.full((n, width), np.nan)
        target = np.full(n, np.nan)
        scale = np.ones(n)
        target_at = np.full(n, np.iinfo(np.int64).max)
        for indices in key_positions(stream.keys).values():
            y = stream.values[indices]
            level = _trailing_mean_abs(y, m)
            level[level == 0] = 1.0
            scale[indices] = level
            count = len(y)
            for lag in range(lags):  # column lag: y[t - lag]
                rows[indices[lag:], lag] = y[: count - lag] / level[lag:]
            for column, back in enumerate((m - 1, 2 * m - 1, m)):  # y[t+1-m], y[t+1-2m], y[t-m]
                if back < count:
                    rows[indices[back:], lags + column] = y[: count - back] / level[back:]
            rows[indices, lags + 3] = np.log1p(np.abs(level))
            target[indices[:-1]] = (y[1:] - y[:-1]) / level[:-1]
            target_at[indices[:-1]] = indices[1:]
        rows[:, lags + 4 : lags + 4 + calendar.shape[1]] = calendar
        if exogenous is not None:
            rows[:, lags + 4 + calendar.shape[1] :] = exogenous
        return rows, target, scale, target_at


def _trailing_mean_abs(y: np.ndarray, window: int) -> np.ndarray:
    """Return per position the mean of |y| over the last `window` values up to it (fewer early)."""
    cumulative = np.concatenate([[0.0], np.cumsum(np.abs(y))])
    ends = np.arange(1, len(y) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def _calendar(ts: np.ndarray, cadence: float) -> np.ndarray:
    """Return hour of day, day of week and day of year of each target time (ts + cadence).

    Only the parts that vary at this cadence (hour under a day, weekday under a week).
    """
    target = ts + cadence
    parts = []
    if cadence < DAY_S * 0.9:
        parts.append((target % DAY_S) / 3600.0)
    if cadence < WEEK_S * 0.9:
        parts.append(np.floor((target / DAY_S + 3) % 7))  # 1970-01-01 was a Thursday
    parts.append(np.floor((target % YEAR_S) / DAY_S))
    return np.stack(parts, axis=1)


def _refit_positions(ts: np.ndarray, every_s: float) -> np.ndarray:
    """Return the stream positions where event time first reaches each refit boundary."""
    if len(ts) == 0:
        return np.zeros(0, np.int64)
    boundaries = ts[0] + every_s * np.arange(1, int((ts.max() - ts[0]) // every_s) + 1)
    clock = np.maximum.accumulate(ts)  # global event time: the latest time seen so far
    return np.unique(np.searchsorted(clock, boundaries, side="left"))
