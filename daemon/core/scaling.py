"""Per-key online normalisation: running mean and standard deviation (Welford).

Pure numpy. Each stream key carries its own statistics with its state, so keys whose values
differ in scale by 100× or more all reach the model near zero mean and unit variance.
"""

from __future__ import annotations

import numpy as np

# Normalised values are clipped to ±CLIP_SIGMAS: a rare flag or a first outlier of a key whose
# spread is still unknown must not blow up the LSTM's inputs or the loss.
CLIP_SIGMAS = 10.0
# The spread never falls below this fraction of the level (or of 1 for values near 0): a
# constant feature would otherwise divide by zero the first time it changes.
_MIN_RELATIVE_STD = 0.01


class RunningStats:
    """Running mean and variance of a vector stream, with normalise and denormalise."""

    __slots__ = ("count", "m2", "mean")

    def __init__(self, size: int) -> None:
        self.count = 0
        self.mean = np.zeros(size, dtype=np.float64)
        self.m2 = np.zeros(size, dtype=np.float64)

    def update(self, value: np.ndarray) -> None:
        """Fold one observation into the statistics."""
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (location, spread) used to normalise; (0, 1) before any observation."""
        if self.count == 0:
            return np.zeros_like(self.mean), np.ones_like(self.mean)
        floor = _MIN_RELATIVE_STD * np.maximum(np.abs(self.mean), 1.0)
        if self.count == 1:
            # One value says nothing about spread: use the level itself as the scale.
            return self.mean.copy(), np.maximum(np.abs(self.mean), 1.0)
        std = np.sqrt(self.m2 / self.count)
        return self.mean.copy(), np.maximum(std, floor)

    def to_arrays(self) -> tuple[int, np.ndarray, np.ndarray]:
        """Return (count, mean, m2) for snapshots."""
        return self.count, self.mean.copy(), self.m2.copy()

    @classmethod
    def from_arrays(cls, count: int, mean: np.ndarray, m2: np.ndarray) -> RunningStats:
        """Adopt saved statistics; `mean` and `m2` (float64) become this object's own state.

        Restoring 100,000 keys must take well under a second, so the rows of the loaded arrays
        are used as they are (views), not copied.
        """
        stats = cls.__new__(cls)
        stats.count = int(count)
        stats.mean = mean
        stats.m2 = m2
        return stats


def normalise(value: np.ndarray, location: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Return `value` in units of spread around location, clipped to ±CLIP_SIGMAS."""
    return np.clip((value - location) / spread, -CLIP_SIGMAS, CLIP_SIGMAS)


def denormalise(value: np.ndarray, location: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Invert `normalise` (up to the clip)."""
    return value * spread + location
