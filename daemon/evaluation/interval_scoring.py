"""Intervals in the evaluation: their coverage and interval score, and conformal bounds for a
model that has none of its own.

The score is the interval (Winkler) score, `daemon.core.prequential.IntervalScores`' formula:
width plus 2/α times each miss's distance; lower is better. `conformal_bounds` wraps any
model's prequential forecasts in the same calibration lstmd runs (`daemon.core.intervals`), so
that an anchor without intervals (the global LightGBM) gets them the way lstmd does.
"""

from __future__ import annotations

import math

import numpy as np

from daemon.core.intervals import IntervalCalibrator
from daemon.evaluation.scoring import Pairs
from daemon.evaluation.stream import Stream


def interval_score(
    lower: np.ndarray, upper: np.ndarray, truth: np.ndarray, level: float
) -> tuple[float, float]:
    """Return (coverage, mean interval score) of bounds against truth (NaN without any)."""
    if truth.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - level
    hits = (truth >= lower) & (truth <= upper)
    score = (
        (upper - lower)
        + (2 / alpha) * np.maximum(lower - truth, 0.0)
        + (2 / alpha) * np.maximum(truth - upper, 0.0)
    )
    return float(hits.mean()), float(score.mean())


def pair_bounds(
    lower: np.ndarray, upper: np.ndarray, pairs: Pairs
) -> tuple[np.ndarray, np.ndarray]:
    """Return the bounds of each pair's forecast ([events] or [events, H] per-step columns)."""
    column = (lambda a: a) if lower.ndim == 1 else (lambda a: a[:, pairs.steps - 1])
    return column(lower)[pairs.source], column(upper)[pairs.source]


def conformal_bounds(
    stream: Stream,
    forecasts: np.ndarray,
    levels: tuple[float, ...],
    rate: float,
    warmup: int,
) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray]]:
    """Calibrate intervals around a model's one-step forecasts, online, as lstmd does.

    Per key: residuals scaled by the running spread of the key's steps (the key's own values up
    to the forecast), quantile-tracked per level; a partition-wide tracker for young keys. The
    residual of the forecast for t joins the trackers when t + 1 arrives, so each interval uses
    only values up to its event.

    Returns:
        (lower, upper): per level, [events] bounds (NaN for a key's last event).
    """
    calibrator = IntervalCalibrator(levels, 1, rate, warmup, capacity=len(stream.keys))
    lower = {level: np.full(len(stream.keys), np.nan) for level in levels}
    upper = {level: np.full(len(stream.keys), np.nan) for level in levels}
    rows: dict[str, int] = {}
    # key -> (event, forecast, spread, its published bounds)
    last: dict[str, tuple[int, float, float, np.ndarray]] = {}
    steps: dict[str, list[float]] = {}  # key -> [count, mean, m2] of its steps
    event_cold = np.zeros(len(stream.keys), bool)
    for index, key in enumerate(stream.keys):
        row = rows.setdefault(key, len(rows))
        value = float(stream.values[index])
        previous = last.get(key)
        if previous is not None:
            event, forecast, spread, published = previous
            calibrator.update(
                np.array([row]),
                np.array([[value - forecast]]),
                np.array([[spread]]),
                np.array([event_cold[event]]),
                published[None, :],
                np.array([[value]]),
            )
            _welford(steps.setdefault(key, [0, 0.0, 0.0]), value - float(stream.values[event]))
        spread = _spread(steps.get(key), value)
        event_cold[index] = steps.get(key, [0])[0] < 2
        forecast = float(forecasts[index, 0])
        if not math.isfinite(forecast):
            continue
        bounds = calibrator.interval_bounds(
            np.array([row]),
            np.array([[forecast]]),
            np.array([[spread]]),
            np.array([event_cold[index]]),
        )[0, :, 0]
        for i, level in enumerate(levels):
            lower[level][index], upper[level][index] = bounds[2 * i], bounds[2 * i + 1]
        last[key] = (index, forecast, spread, bounds)
    return lower, upper


def _welford(stats: list[float], value: float) -> None:
    stats[0] += 1
    delta = value - stats[1]
    stats[1] += delta / stats[0]
    stats[2] += delta * (value - stats[1])


def _spread(stats: list[float] | None, level: float) -> float:
    """The key's step spread, floored at 1% of its level as lstmd's scaling does."""
    floor = 0.01 * max(abs(level), 1.0)
    if stats is None or stats[0] == 0:
        return max(abs(level), 1.0)  # nothing known of its steps: the level itself
    if stats[0] == 1:
        return max(abs(stats[1]), floor)
    return max(math.sqrt(stats[2] / stats[0]), floor)
