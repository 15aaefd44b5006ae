"""Per-key online normalisation: running mean and standard deviation (Welford).

Pure numpy. Each stream key has its own row of statistics next to its state, so keys whose values
differ in scale by 100× or more all reach the model near zero mean and unit variance.
"""

from __future__ import annotations

import math

import numpy as np

from daemon.core import pages

# Normalised values are clipped to ±CLIP_SIGMAS: a rare flag or a first outlier of a key whose
# spread is still unknown must not blow up the LSTM's inputs or the loss.
CLIP_SIGMAS = 10.0
# The spread never falls below this fraction of the level (or of 1 for values near 0): a
# constant feature would otherwise divide by zero the first time it changes.
_MIN_RELATIVE_STD = 0.01


class StatsColumns:
    """Running mean and variance (Welford) of a vector per row: one row per stream key.

    Rows of contiguous arrays instead of an object per key: an idle key costs its bytes only,
    and a snapshot saves the arrays as they are. The arrays are allocated on the first
    observation: a store keeps target statistics (supervised) and step statistics (forecast),
    and a stream of one mode never pays for the other's.

    Dtypes: `count` is int64 because a key can see more than 2**31 events in a long run; mean
    and M2 are float64, the precision Welford's update needs to stay stable over long runs (the
    float32 inputs and model do not need it; the statistics do).
    """

    __slots__ = ("_count", "_m2", "_mean", "capacity", "size")

    def __init__(self, size: int, capacity: int) -> None:
        self.size = size
        self.capacity = capacity
        self._count: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    @property
    def allocated(self) -> bool:
        """Say whether any row has been written (before that, every row has no observation)."""
        return self._count is not None

    def _allocate(self) -> None:
        self._count = pages.zeros((self.capacity,), np.int64)
        self._mean = pages.zeros((self.capacity, self.size), np.float64)
        self._m2 = pages.zeros((self.capacity, self.size), np.float64)

    @property
    def count(self) -> np.ndarray:
        """Observations per row (allocates the columns on first use)."""
        if self._count is None:
            self._allocate()
        return self._count  # type: ignore[return-value]

    @property
    def mean(self) -> np.ndarray:
        """Running mean per row (allocates the columns on first use)."""
        if self._mean is None:
            self._allocate()
        return self._mean  # type: ignore[return-value]

    @property
    def m2(self) -> np.ndarray:
        """Sum of squared deviations per row (allocates the columns on first use)."""
        if self._m2 is None:
            self._allocate()
        return self._m2  # type: ignore[return-value]

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` rows, keeping the existing ones."""
        old = self.capacity
        self.capacity = capacity
        if self._count is None:
            return
        for name in ("_count", "_mean", "_m2"):
            # Fresh zero pages: the spare rows cost no RSS until keys take them.
            setattr(self, name, pages.grown(getattr(self, name)[:old], capacity))

    def clear(self, row: int) -> None:
        """Forget a row's observations."""
        if self._count is None:
            return
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
        level = np.abs(mean)
        np.maximum(level, 1.0, out=level)
        if count == 1:
            return mean.copy(), level
        spread = np.sqrt(m2 / count)
        np.maximum(spread, _MIN_RELATIVE_STD * level, out=spread)
        return mean.copy(), spread

    def fold_normalise(
        self, row: int, value: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`fold`, then `normalise(value, location, spread)`: (normalised, location, spread)."""
        location, spread = self.fold(row, value)
        return normalise(value, location, spread), location, spread

    def fold_normalise_rows(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """`fold_normalise` of one observation for each of several distinct rows at once.

        Args:
            rows: [k] distinct rows.
            values: [k, size], one observation per row.

        Returns:
            [k, size]: each observation normalised by its row's statistics after it. Every
            element sees the same IEEE operations as `fold_normalise`, so it is bit-identical.
        """
        if self.size == 1:  # `fold` runs Python floats there: the same, down to NaN bits
            return np.stack(
                [self.fold_normalise(int(r), v)[0] for r, v in zip(rows, values, strict=True)]
            )
        count = self.count[rows] + 1
        self.count[rows] = count
        counts = count[:, None]
        mean = self.mean[rows]
        delta = values - mean
        mean += delta / counts
        m2 = self.m2[rows]
        m2 += delta * (values - mean)
        self.mean[rows] = mean
        self.m2[rows] = m2
        level = np.abs(mean)
        np.maximum(level, 1.0, out=level)
        with np.errstate(invalid="ignore"):  # rows seen once take `level`, not this spread
            spread = np.sqrt(m2 / counts)
        np.maximum(spread, _MIN_RELATIVE_STD * level, out=spread)
        first = count == 1
        spread[first] = level[first]
        z = values - mean
        z /= spread
        np.maximum(z, -CLIP_SIGMAS, out=z)
        return np.minimum(z, CLIP_SIGMAS, out=z)

    def _fold_one(self, row: int, value: float) -> tuple[np.ndarray, np.ndarray]:
        mean, spread = self.fold_one(row, value)
        return np.array([mean]), np.array([spread])

    def fold_one(self, row: int, value: float) -> tuple[float, float]:
        """`fold` for a one-wide row (a single forecast target), as Python floats.

        A dozen numpy calls on 1-element arrays cost ~10x the arithmetic. The same IEEE
        operations in the same order as the vector path, so the results are bit-identical.
        """
        count = int(self.count[row]) + 1
        self.count[row] = count
        mean, m2, spread = _welford_step(
            count, float(self.mean[row, 0]), float(self.m2[row, 0]), value
        )
        self.mean[row, 0] = mean
        self.m2[row, 0] = m2
        return mean, spread

    def peek_fold(
        self, row: int, columns: list[int], values: list[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return what `fold` of one more observation would give for some columns; fold nothing.

        `values` are the observation's entries in those columns. The statistics are left as
        they are, for a later `fold_normalise_rows` of the whole observation: the same IEEE
        operations, so the same bits.
        """
        count = int(self.count[row]) + 1
        locations, spreads = [], []
        for column, value in zip(columns, values, strict=True):
            mean, _, spread = _welford_step(
                count, float(self.mean[row, column]), float(self.m2[row, column]), value
            )
            locations.append(mean)
            spreads.append(spread)
        return np.array(locations), np.array(spreads)

    def scale(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Return a row's (location, spread) used to normalise; (0, 1) before any observation."""
        count = 0 if self._count is None else int(self._count[row])
        if count == 0:
            return np.zeros(self.size), np.ones(self.size)
        mean = self.mean[row]
        if count == 1:
            # One value says nothing about spread: use the level itself as the scale.
            return mean.copy(), np.maximum(np.abs(mean), 1.0)
        floor = _MIN_RELATIVE_STD * np.maximum(np.abs(mean), 1.0)
        return mean.copy(), np.maximum(np.sqrt(self.m2[row] / count), floor)

    def to_arrays(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return copies of (count, mean, m2) of `rows`, for snapshots."""
        if self._count is None:
            n = len(rows)
            return np.zeros(n, np.int64), np.zeros((n, self.size)), np.zeros((n, self.size))
        return self.count[rows], self.mean[rows], self.m2[rows]

    def put(self, rows: np.ndarray, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Load saved statistics into `rows` (a column never observed stays unallocated)."""
        if self._count is None and not np.any(count):
            return
        self.count[rows] = count
        self.mean[rows] = mean
        self.m2[rows] = m2


def _welford_step(count: int, mean: float, m2: float, value: float) -> tuple[float, float, float]:
    """Fold one value into one column's (mean, m2) at `count`; return (mean, m2, spread).

    Python floats, `fold`'s IEEE operations in its order: a dozen numpy calls on one-element
    arrays cost ~10x the arithmetic.
    """
    delta = value - mean
    mean += delta / count
    m2 += delta * (value - mean)
    level = _max(abs(mean), 1.0)
    if count == 1:
        return mean, m2, level
    variance = m2 / count
    std = math.sqrt(variance) if variance >= 0.0 else math.nan
    return mean, m2, _max(std, _MIN_RELATIVE_STD * level)


def _max(a: float, b: float) -> float:
    """Return `np.maximum(a, b)` for two floats: NaN wins, as there."""
    return a if a >= b or a != a else b


def normalise(value: np.ndarray, location: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Return `value` in units of spread around location, clipped to ±CLIP_SIGMAS."""
    z = (value - location) / spread
    # np.clip's Python wrapper costs more than the arithmetic on vectors this small.
    return np.minimum(np.maximum(z, -CLIP_SIGMAS, out=z), CLIP_SIGMAS, out=z)


def normalise_one(value: float, location: float, spread: float) -> float:
    """`normalise` of one number in Python floats: the same IEEE operations, NaN kept."""
    if spread == 0.0:  # Python raises where numpy gives ±inf or NaN
        return float(normalise(np.array([value]), np.array([location]), np.array([spread]))[0])
    z = (value - location) / spread
    z = z if z >= -CLIP_SIGMAS or z != z else -CLIP_SIGMAS
    return z if z <= CLIP_SIGMAS or z != z else CLIP_SIGMAS


def denormalise(value: np.ndarray, location: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Invert `normalise` (up to the clip)."""
    return value * spread + location
