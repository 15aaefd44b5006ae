"""Prediction intervals, calibrated online: each key's error scale times partition-wide quantiles.

Every prediction carries, per target and step, an interval at each configured level ℓ:

    [ŷ + q_lo · σ_k,  ŷ + q_hi · σ_k]

* σ_k is the key's error scale: an exponentially weighted mean of its absolute prequential errors
  (rate SCALE_RATE, about the last ten), so a key whose errors grow gets wider intervals within a
  few values, and keys of any size share one set of quantiles. A young key leans on a prior, the
  spread its target is normalised with times the partition's typical error-to-spread ratio:
  σ = (n σ_k + w σ_prior) / (n + w) after n errors, w = `intervals.warmup`. Events whose spread
  still comes from the key's level (its first values, before it has two steps) keep a ratio of
  their own: a level is no step size.
* q_lo, q_hi are the partition's quantiles (1 − ℓ)/2 and (1 + ℓ)/2 of the standardised errors
  (y − ŷ) / σ, tracked by adaptive conformal inference on the intervals actually published
  (Gibbs and Candès 2021; quantile tracking, Angelopoulos, Candès and Tibshirani 2023):

      q ← q + η (τ − share of the batch's values below the published bound)

  Whatever the errors' distribution and however it drifts, the long-run share of values below
  each published bound tends to τ, so the partition's coverage tends to ℓ (a test checks it on
  heavy-tailed, skewed and drifting errors and on many short keys).

Nothing leaks: σ, the ratios and q move only when a train step scores an event, and every step
answers the forecasts waiting before it, so an interval published for event t uses errors of
events whose targets arrived before t did (tests/unit/core/test_intervals.py, and with the real
model tests/unit/model/test_learning.py).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from daemon.core import pages

# σ_k follows the key's last ~10 absolute errors; the partition's error-to-spread ratios follow
# its last ~100. The ratios start at 0.8, the mean absolute standard normal: what the naive
# forecast's error is in units of the key's step spread.
SCALE_RATE = 0.1
RATIO_RATE = 0.01
_START_RATIO = 0.8
WARM, COLD = 0, 1


def _occurrence(rows: np.ndarray) -> np.ndarray:
    """Return for each entry how many earlier entries hold the same row."""
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    lengths = np.diff(np.r_[starts, len(rows)])
    out = np.empty(len(rows), np.int64)
    out[order] = np.arange(len(rows)) - np.repeat(starts, lengths)
    return out


def bound_quantiles(levels: tuple[float, ...]) -> np.ndarray:
    """Return τ of each bound: per level its lower then its upper quantile, [2 × levels]."""
    return np.array([t for level in levels for t in ((1 - level) / 2, (1 + level) / 2)])


class IntervalCalibrator:
    """Per-key error scales and partition-wide quantiles, as rows of contiguous arrays.

    Attributes:
        levels: Interval levels, e.g. (0.8, 0.95).
        width: Output columns (n_targets × horizon).
        rate: η of the quantiles, in standardised-error units per scored batch.
        warmup: Weight, in errors, of a key's prior scale.
        capacity: Rows held.
    """

    def __init__(
        self, levels: tuple[float, ...], width: int, rate: float, warmup: int, capacity: int = 0
    ) -> None:
        if any(not 0 < level < 1 for level in levels):
            raise ValueError(f"interval levels must lie in (0, 1), got {list(levels)}")
        self.levels = tuple(levels)
        self.width = width
        self.rate = rate
        self.warmup = warmup
        self.capacity = 0
        self.taus = bound_quantiles(self.levels)[:, None]  # [bounds, 1]
        # Standardised errors of a well-scaled key are about normal with mean |e| = 1: start
        # from the normal quantiles in units of the mean absolute error.
        normal = [NormalDist().inv_cdf(t) / _START_RATIO for t in self.taus[:, 0]]
        self.q = np.repeat(np.array(normal)[:, None], width, axis=1)  # [bounds, width]
        self.ratio = np.full((2, width), _START_RATIO)  # [warm/cold, width]
        self.scored = 0
        self._scale: np.ndarray | None = None  # [capacity, width], allocated on first use
        self._count: np.ndarray | None = None  # errors seen per key
        self.grow(capacity)

    @property
    def bounds(self) -> int:
        """Return the number of bounds per column: two per level."""
        return 2 * len(self.levels)

    def _allocate(self) -> None:
        self._scale = pages.zeros((self.capacity, self.width), np.float64)
        self._count = pages.zeros((self.capacity,), np.int64)

    def grow(self, capacity: int) -> None:
        """Hold `capacity` rows, keeping the existing ones (new rows have seen nothing)."""
        old, self.capacity = self.capacity, capacity
        if self._scale is not None and self._count is not None:
            self._scale = pages.grown(self._scale[:old], capacity)
            self._count = pages.grown(self._count[:old], capacity)

    def clear(self, row: int) -> None:
        """Forget a row's errors (a new key, or a key dropped from the store)."""
        if self._scale is not None and self._count is not None:
            self._scale[row] = 0.0
            self._count[row] = 0

    def scales(self, rows: np.ndarray, spreads: np.ndarray, cold: np.ndarray) -> np.ndarray:
        """Return σ of each prediction, [k, width]: its key's, leaning on the prior while young.

        Args:
            rows: Each prediction's key row.
            spreads: [k, width]: what each event's target is normalised with.
            cold: [k] bool: the spread is still the key's level, not its step spread.
        """
        prior = spreads * self.ratio[cold.astype(np.int64)]
        if self._scale is None or self._count is None:
            return prior
        n = self._count[rows].astype(np.float64)[:, None]
        if not self.warmup:
            return np.where(n > 0, self._scale[rows], prior)
        return (n * self._scale[rows] + self.warmup * prior) / (n + self.warmup)

    def interval_bounds(
        self, rows: np.ndarray, predictions: np.ndarray, spreads: np.ndarray, cold: np.ndarray
    ) -> np.ndarray:
        """Return the bounds of the rows' predictions in target units, [k, bounds, width].

        Per level the lower bound is at most the upper one.
        """
        lower, upper = (
            np.minimum(self.q[0::2], self.q[1::2]),
            np.maximum(self.q[0::2], self.q[1::2]),
        )
        q = np.empty_like(self.q)
        q[0::2], q[1::2] = lower, upper
        sigma = self.scales(rows, spreads, cold)
        return predictions[:, None, :] + q[None] * sigma[:, None, :]

    def update(
        self,
        rows: np.ndarray,
        errors: np.ndarray,
        spreads: np.ndarray,
        cold: np.ndarray,
        published: np.ndarray,
        target: np.ndarray,
    ) -> None:
        """Learn from scored values, in one batch against the state before it.

        Args:
            rows: [k] key rows, repeated when a key has several values in the batch.
            errors: [k, width] y − ŷ in target units.
            spreads: [k, width] what each target was normalised with; `cold` as for `scales`.
            published: [k, bounds × width]: the intervals published for these values (NaN:
                unknown, e.g. published before a restore; they move no quantile).
            target: [k, width] the values.
        """
        finite = np.isfinite(errors).all(axis=1) & np.isfinite(spreads).all(axis=1)
        self._track_quantiles(published[finite], target[finite])
        rows, errors, spreads, cold = rows[finite], errors[finite], spreads[finite], cold[finite]
        if not len(rows):
            return
        magnitude = np.abs(errors)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(spreads > 0, magnitude / spreads, np.nan)
        for kind in (WARM, COLD):
            chosen = ratios[cold == bool(kind)]
            chosen = chosen[np.isfinite(chosen).all(axis=1)]
            if len(chosen):  # one step towards the batch's mean, weighted by its size
                weight = 1.0 - (1.0 - RATIO_RATE) ** len(chosen)
                self.ratio[kind] += weight * (chosen.mean(axis=0) - self.ratio[kind])
        if self._scale is None:
            self._allocate()
        scale, count = self._scale, self._count
        assert scale is not None and count is not None  # allocated above
        # A key's values in order (an EWMA is sequential): round r takes each key's r-th value.
        occurrence = _occurrence(rows)
        for r in range(int(occurrence.max()) + 1):
            chosen = occurrence == r
            keys, values = rows[chosen], magnitude[chosen]
            first = count[keys] == 0
            scale[keys] = np.where(
                first[:, None], values, scale[keys] + SCALE_RATE * (values - scale[keys])
            )
            count[keys] += 1

    def _track_quantiles(self, published: np.ndarray, target: np.ndarray) -> None:
        """Move each bound's quantile by whether the values fell below what it published."""
        known = np.isfinite(published).all(axis=1) & np.isfinite(target).all(axis=1)
        if not known.any():
            return
        laid = published[known].reshape(-1, self.bounds, self.width)
        below = target[known][:, None, :] < laid  # [k, bounds, width]
        # One step per batch (a train step's values), towards the batch's share below: a step
        # per value would move the partition's quantiles B × T times per train step.
        self.q += self.rate * (self.taus - below.mean(axis=0))
        self.scored += int(known.sum())

    # ---- snapshots ----------------------------------------------------------------------

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return the rows' scales and the partition's quantiles, as arrays for a snapshot."""
        if self._scale is None or self._count is None:
            scale = np.zeros((len(rows), self.width))
            count = np.zeros(len(rows), np.int64)
        else:
            scale, count = self._scale[rows], self._count[rows]
        return {
            "ci_levels": np.asarray(self.levels, np.float64),
            "ci_scale": scale,
            "ci_count": count,
            "ci_q": self.q.copy(),
            "ci_ratio": self.ratio.copy(),
            "ci_scored": np.asarray([self.scored], np.int64),
        }

    def put(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> bool:
        """Load what `take` returned into `rows`; return whether it was loaded.

        Saved state of other levels (another configuration, or a snapshot made before
        intervals existed) is not loaded: the calibration then starts afresh.

        Raises:
            ValueError: State of these levels whose shapes do not fit, or non-finite values.
        """
        levels = arrays.get("ci_levels")
        if levels is None or levels.shape != (len(self.levels),):
            return False
        if not np.allclose(levels, self.levels):
            return False
        scale, count = np.asarray(arrays["ci_scale"]), np.asarray(arrays["ci_count"])
        q, ratio = np.asarray(arrays["ci_q"]), np.asarray(arrays["ci_ratio"])
        if (
            scale.shape != (len(rows), self.width)
            or count.shape != (len(rows),)
            or q.shape != self.q.shape
            or ratio.shape != self.ratio.shape
        ):
            raise ValueError(
                f"interval state of shapes {scale.shape}, {q.shape} does not fit {len(rows)} "
                f"rows of width {self.width} at {len(self.levels)} levels"
            )
        if not all(np.isfinite(a).all() for a in (scale, q, ratio)) or (count < 0).any():
            raise ValueError("interval state holds non-finite values or negative counts")
        if self._scale is None:
            self._allocate()
        assert self._scale is not None and self._count is not None
        self._scale[rows], self._count[rows] = scale, count
        self.q, self.ratio = q.astype(np.float64), ratio.astype(np.float64)
        self.scored = int(np.asarray(arrays["ci_scored"]).reshape(-1)[0])
        return True
