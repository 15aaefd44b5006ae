"""Rolling prequential error: mean absolute error over the last N scored target values (pure).

A since-start mean stops moving after a few hours of a long-running daemon and hides drift; a
fixed window of the most recent errors shows how the model does now.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


class RollingMAE:
    """Mean of the last `size` absolute errors, updated in O(1) per value."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self._ring = [0.0] * size
        self._next = 0  # where the next value goes
        self._filled = 0
        self._sum = 0.0  # of the finite values in the window
        self._nonfinite = 0  # NaN or infinite values in the window
        self._since_resum = 0

    def add(self, abs_errors: float | Iterable[float]) -> None:
        """Score one absolute error, or several in order."""
        if not isinstance(abs_errors, Iterable):
            self._add_one(float(abs_errors))
            return
        for error in abs_errors:
            self._add_one(float(error))

    def _add_one(self, error: float) -> None:
        if self._filled == self.size:
            self._forget(self._ring[self._next])
        else:
            self._filled += 1
        self._ring[self._next] = error
        self._next = (self._next + 1) % self.size
        if math.isfinite(error):
            self._sum += error
        else:
            # Kept apart so that one NaN spoils the mean only while it is in the window.
            self._nonfinite += 1
        self._since_resum += 1
        if self._since_resum >= self.size:
            # Adding and subtracting drifts by rounding; an exact re-sum every `size` updates
            # bounds the drift and still costs O(1) per value on average.
            self._since_resum = 0
            self._sum = math.fsum(e for e in self._ring[: self._filled] if math.isfinite(e))

    def _forget(self, error: float) -> None:
        if math.isfinite(error):
            self._sum -= error
        else:
            self._nonfinite -= 1

    @property
    def count(self) -> int:
        """Return how many values the window holds."""
        return self._filled

    @property
    def value(self) -> float:
        """Return the mean absolute error of the window; NaN when empty or holding a NaN."""
        if self._filled == 0 or self._nonfinite:
            return float("nan")
        return max(0.0, self._sum) / self._filled


class RollingPrequential:
    """Rolling MAE of the model and of the naive forecast, scored on the same target values."""

    def __init__(self, size: int) -> None:
        self.model = RollingMAE(size)
        self.naive = RollingMAE(size)

    def add(self, prediction: np.ndarray, naive: np.ndarray, target: np.ndarray) -> None:
        """Score one event's prediction and naive forecast against its target."""
        self.model.add(np.abs(prediction - target).ravel().tolist())
        self.naive.add(np.abs(naive - target).ravel().tolist())

    @property
    def model_mae(self) -> float:
        """Return the model's rolling MAE."""
        return self.model.value

    @property
    def naive_mae(self) -> float:
        """Return the naive forecast's rolling MAE."""
        return self.naive.value


@dataclass(slots=True)
class Prequential:
    """Running absolute errors of the model and of the naive forecast on the same events.

    With a horizon H > 1 the values are also summed per step ahead: a forecast's step h is
    scored against the value h events later, and errors grow with h.

    Attributes:
        horizon: H; prediction and target rows are n_targets × H wide, target-major.
        step_model_abs, step_naive_abs, step_count: per step h at index h − 1 (H > 1 only).
    """

    horizon: int = 1
    model_abs: float = 0.0
    naive_abs: float = 0.0
    count: int = 0  # scored target values
    step_model_abs: list[float] = field(default_factory=list)
    step_naive_abs: list[float] = field(default_factory=list)
    step_count: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.horizon > 1 and not self.step_count:
            self.step_model_abs = [0.0] * self.horizon
            self.step_naive_abs = [0.0] * self.horizon
            self.step_count = [0] * self.horizon

    def add(self, prediction: np.ndarray, naive: np.ndarray, target: np.ndarray) -> None:
        """Score predictions and naive forecasts (rows of n_targets × H) against targets."""
        model_errors = np.abs(prediction - target)
        naive_errors = np.abs(naive - target)
        self.model_abs += float(model_errors.sum())
        self.naive_abs += float(naive_errors.sum())
        self.count += target.size
        if self.horizon > 1:
            per_step = target.size // self.horizon
            model_steps = model_errors.reshape(-1, self.horizon).sum(axis=0)
            naive_steps = naive_errors.reshape(-1, self.horizon).sum(axis=0)
            for h in range(self.horizon):
                self.step_model_abs[h] += float(model_steps[h])
                self.step_naive_abs[h] += float(naive_steps[h])
                self.step_count[h] += per_step

    @property
    def model_mae(self) -> float:
        """Return the model's MAE over every scored value (all steps ahead)."""
        return self.model_abs / self.count if self.count else float("nan")

    @property
    def naive_mae(self) -> float:
        """Return the naive forecast's MAE over every scored value."""
        return self.naive_abs / self.count if self.count else float("nan")

    def step_maes(self) -> list[float]:
        """Return the model's MAE per step ahead h = 1..H (one value, `model_mae`, for H = 1)."""
        if self.horizon == 1:
            return [self.model_mae]
        return _means(self.step_model_abs, self.step_count)

    def step_naive_maes(self) -> list[float]:
        """Return the naive forecast's MAE per step ahead h = 1..H."""
        if self.horizon == 1:
            return [self.naive_mae]
        return _means(self.step_naive_abs, self.step_count)


def _means(sums: list[float], counts: list[int]) -> list[float]:
    return [a / n if n else float("nan") for a, n in zip(sums, counts, strict=True)]


class IntervalScores:
    """Coverage and interval (Winkler) score of published intervals, per level.

    For level ℓ, miss rate α = 1 − ℓ, bounds [lo, hi] and truth y, the interval score is
    (hi − lo) + (2/α)(lo − y)·1{y < lo} + (2/α)(y − hi)·1{y > hi} (Gneiting and Raftery 2007):
    width, plus a penalty for each miss that grows with the miss. Lower is better; it rewards
    narrow intervals only as long as they cover. Kept since start (sums) and over a rolling
    window of the most recent scored values (Prometheus, the metrics topic).
    """

    def __init__(self, levels: tuple[float, ...], window: int) -> None:
        self.levels = tuple(levels)
        self.covered = [0] * len(levels)
        self.score_sum = [0.0] * len(levels)
        self.count = 0  # scored values (per level: every level scores each value)
        self.rolling_covered = [RollingMAE(window) for _ in levels]
        self.rolling_score = [RollingMAE(window) for _ in levels]

    def add(self, bounds: np.ndarray, target: np.ndarray) -> None:
        """Score events' intervals: bounds [k, 2 × levels × width] (per level lower, upper)."""
        if not self.levels or not len(target):
            return
        known = np.isfinite(bounds).all(axis=1)  # unknown: published before a restore
        bounds, target = bounds[known], target[known]
        k, width = target.shape
        if not k:
            return
        laid = bounds.reshape(k, len(self.levels), 2, width)
        for i, level in enumerate(self.levels):
            lower, upper = laid[:, i, 0], laid[:, i, 1]
            hits = (target >= lower) & (target <= upper)
            alpha = 1.0 - level
            score = (
                (upper - lower)
                + (2 / alpha) * np.maximum(lower - target, 0.0)
                + (2 / alpha) * np.maximum(target - upper, 0.0)
            )
            self.covered[i] += int(hits.sum())
            self.score_sum[i] += float(score.sum())
            self.rolling_covered[i].add(hits.ravel().astype(np.float64).tolist())
            self.rolling_score[i].add(score.ravel().tolist())
        self.count += target.size

    def coverage(self) -> dict[float, float]:
        """Return each level's coverage since start (NaN before any scored value)."""
        return {
            level: (c / self.count if self.count else math.nan)
            for level, c in zip(self.levels, self.covered, strict=True)
        }

    def interval_score(self) -> dict[float, float]:
        """Return each level's mean interval score since start."""
        return {
            level: (s / self.count if self.count else math.nan)
            for level, s in zip(self.levels, self.score_sum, strict=True)
        }

    def rolling_coverage(self) -> dict[float, float]:
        """Return each level's coverage over the rolling window."""
        return {lv: w.value for lv, w in zip(self.levels, self.rolling_covered, strict=True)}

    def rolling_interval_score(self) -> dict[float, float]:
        """Return each level's mean interval score over the rolling window."""
        return {lv: w.value for lv, w in zip(self.levels, self.rolling_score, strict=True)}
