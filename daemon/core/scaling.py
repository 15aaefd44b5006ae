"""Per-key online normalisation: running mean and standard deviation (Welford).

Pure numpy. Each stream key has its own row of statistics next to its state, so keys whose values
differ in scale by 100× or more all reach the model near zero mean and unit variance.
"""

from __future__ import annotations

import math

import numpy as np

# Normalised values are clipped to ±CLIP_SIGMAS: a rare flag or a first outlier of a key whose
# spread is still unknown must not blow up the LSTM's inputs or the loss.
CLIP_SIGMAS = 10.0
# The spread never falls below this fraction of the level (or of 1 for values near 0): a
# constant feature would otherwise divide by zero the first time it changes.
_MIN_RELATIVE_STD = 0.01


class StatsColumns:
    """Running mean and variance (Welford) of a vector per row: one row per stream key.

    Rows of contiguous arrays instead of an object per key: an idle key costs its bytes only,
    and a snapshot saves the arrays as they are.
    """

    __slots__ = ("count", "m2", "mean", "size")

    def __init__(self, size: int, capacity: int) -> None:
        self.size = size
        self.count = np.zeros(capacity, dtype=np.int64)
        self.mean = np.zeros((capacity, size), dtype=np.float64)
        self.m2 = np.zeros((capacity, size), dtype=np.float64)

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` rows, keeping the existing ones."""
        old = len(self.count)
        for name in ("count", "mean", "m2"):
            values = getattr(self, name)
            grown = np.zeros((capacity, *values.shape[1:]), dtype=values.dtype)
            grown[:old] = values
            setattr(self, name, grown)

    def clear(self, row: int) -> None:
        """Forget a row's observations."""
        self.count[row] = 0
        self.mean[row] = 0.0
        self.m2[row] = 0.0

    def update(self, row: int, value: np.ndarray) -> None:
        """Fold one observation into a row's statistics."""
        count = int(self.count[row]) + 1
        self.count[row] = count
        mean = self.mean[row]
        delta = value - mean
        mean += delta / count
        self.m2[row] += delta * (value - mean)

    def fold(self, row: int, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold one observation into a row; return its (location, spread) after it.

        The same as `update` then `scale`, in fewer array operations: this runs per event.
        """
        if self.size == 1:
            return self._fold_one(row, float(value[0]))
        count = int(self.count[row]) + 1
        self.count[row] = count
        mean = self.mean[row]
        delta = value - mean
        mean += delta / count
        m2 = self.m2[row]
        m2 += delta * (value - mean)
        level = np.maximum(np.abs(mean), 1.0)
        if count == 1:
            return mean.copy(), level
        return mean.copy(), np.maximum(np.sqrt(m2 / count), _MIN_RELATIVE_STD * level)

    def _fold_one(self, row: int, value: float) -> tuple[np.ndarray, np.ndarray]:
        # `fold` for one value per row (a single forecast target) in Python floats: a dozen numpy
        # calls on 1-element arrays cost ~10x the arithmetic. The same IEEE operations in the
        # same order as the vector path, so the results are bit-identical.
        count = int(self.count[row]) + 1
        self.count[row] = count
        mean = float(self.mean[row, 0])
        delta = value - mean
        mean += delta / count
        m2 = float(self.m2[row, 0]) + delta * (value - mean)
        self.mean[row, 0] = mean
        self.m2[row, 0] = m2
        level = _max(abs(mean), 1.0)
        if count == 1:
            return np.array([mean]), np.array([level])
        variance = m2 / count
        std = math.sqrt(variance) if variance >= 0.0 else math.nan
        return np.array([mean]), np.array([_max(std, _MIN_RELATIVE_STD * level)])

    def scale(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Return a row's (location, spread) used to normalise; (0, 1) before any observation."""
        count = int(self.count[row])
        mean = self.mean[row]
        if count == 0:
            return np.zeros(self.size), np.ones(self.size)
        if count == 1:
            # One value says nothing about spread: use the level itself as the scale.
            return mean.copy(), np.maximum(np.abs(mean), 1.0)
        floor = _MIN_RELATIVE_STD * np.maximum(np.abs(mean), 1.0)
        return mean.copy(), np.maximum(np.sqrt(self.m2[row] / count), floor)

    def to_arrays(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return copies of (count, mean, m2) of `rows`, for snapshots."""
        return self.count[rows], self.mean[rows], self.m2[rows]

    def put(self, rows: np.ndarray, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Load saved statistics into `rows`."""
        self.count[rows] = count
        self.mean[rows] = mean
        self.m2[rows] = m2


def _max(a: float, b: float) -> float:
    """Return `np.maximum(a, b)` for two floats: NaN wins, as there."""
    return a if a >= b or a != a else b


def normalise(value: np.ndarray, location: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Return `value` in units of spread around location, clipped to ±CLIP_SIGMAS."""
    z = (value - location) / spread
    # np.clip's Python wrapper costs more than the arithmetic on vectors this small.
    return np.minimum(np.maximum(z, -CLIP_SIGMAS, out=z), CLIP_SIGMAS, out=z)


def denormalise(value: np.ndarray, location: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Invert `normalise` (up to the clip)."""
    return value * spread + location
