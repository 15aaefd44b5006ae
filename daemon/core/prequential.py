"""Rolling prequential error: mean absolute error over the last N scored target values (pure).

A since-start mean stops moving after a few hours of a long-running daemon and hides drift; a
fixed window of the most recent errors shows how the model does now.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

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
    """Running absolute errors of the model and of the naive forecast on the same events."""

    model_abs: float = 0.0
    naive_abs: float = 0.0
    count: int = 0  # scored target values

    def add(self, prediction: np.ndarray, naive: np.ndarray, target: np.ndarray) -> None:
        self.model_abs += float(np.abs(prediction - target).sum())
        self.naive_abs += float(np.abs(naive - target).sum())
        self.count += target.size

    @property
    def model_mae(self) -> float:
        return self.model_abs / self.count if self.count else float("nan")

    @property
    def naive_mae(self) -> float:
        return self.naive_abs / self.count if self.count else float("nan")
