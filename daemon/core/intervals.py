"""Prediction intervals: online conformal quantile tracking of each key's scaled residuals. Pure.

Every prediction carries, per target and step, an interval at each configured level. Its bounds
are the prediction plus quantiles of the key's *scaled residuals* r = (y − ŷ) / s, where s is the
spread the event's target was normalised with (frozen at ingest: the spread of the key's steps
under difference scaling). Scaled, the residuals of keys of any size are comparable, and a key
whose steps grow gets wider intervals at once, before any residual says so.

Each level ℓ has two trackers per key and output column, for the quantiles τ = (1 − ℓ)/2 and
(1 + ℓ)/2 of r, moved by online gradient descent on the pinball loss ("quantile tracking", the P
part of Angelopoulos, Candès and Tibshirani's conformal PID control, 2023):

    q ← q + η (τ − 1{r < q})

Whatever the residuals' distribution and however it drifts, the fraction of residuals below q
tends to τ, so the long-run coverage of each key's interval tends to ℓ: no normality is assumed.
A key's first residuals say little, so a partition-wide tracker (the same update over every
scored residual of the partition, at a smaller rate) stands in for young keys: a key's quantile
is the blend w·q_key + (1 − w)·q_partition with w = n / (n + warmup) after n scored residuals,
and a key's own trackers start from the partition's when its first residual arrives.

The blend of key and partition trackers has no coverage guarantee of its own (a key's tracker
starts at the partition's and has few residuals to converge with). So each level also carries a
partition-wide width factor e^c on the published half-widths, moved by the published intervals'
own misses, as adaptive conformal inference moves its level (Gibbs and Candès, 2021):

    c ← c + η_c (1{y outside the published interval} − (1 − ℓ))

which drives the partition's long-run coverage of what was actually published to ℓ.

Nothing leaks: a tracker moves only when a train step scores an event, and every step answers
the forecasts waiting before it, so an interval published for event t uses residuals of events
whose targets arrived before t did (tests/unit/core/test_intervals.py).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from daemon.core import pages

# The partition-wide tracker sees every key's residuals: a tenth of a key's rate keeps it as
# steady per residual as a key's tracker is over ten.
PARTITION_RATE_FACTOR = 0.1
# Rate of the width factor's log per published interval scored: a miss at level 0.95 widens by
# 1.9%, a hit narrows by 0.1%.
WIDTH_RATE = 0.02


def bound_quantiles(levels: tuple[float, ...]) -> np.ndarray:
    """Return τ of each bound: per level its lower then its upper quantile, [2 × levels]."""
    return np.array([t for level in levels for t in ((1 - level) / 2, (1 + level) / 2)])


class IntervalCalibrator:
    """Per-key quantile trackers of scaled residuals, rows of contiguous arrays.

    Attributes:
        levels: Interval levels, e.g. (0.8, 0.95).
        width: Output columns (n_targets × horizon).
        rate: η of a key's trackers, in scaled-residual units per residual.
        warmup: Scored residuals after which a key's own trackers weigh half.
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
        # Before any residual: the quantiles of a standard normal, the naive forecast's scaled
        # step under difference scaling.
        normal = [NormalDist().inv_cdf(t) for t in self.taus[:, 0]]
        self.partition_q = np.repeat(np.array(normal)[:, None], width, axis=1)
        self.partition_count = 0
        self.log_width = np.zeros(len(self.levels))  # c per level
        self._q: np.ndarray | None = None  # [capacity, bounds, width], allocated on first use
        self._count: np.ndarray | None = None  # scored residuals per key
        self.grow(capacity)

    @property
    def bounds(self) -> int:
        """Return the number of bounds per column: two per level."""
        return 2 * len(self.levels)

    def _allocate(self) -> None:
        self._q = pages.zeros((self.capacity, self.bounds, self.width), np.float64)
        self._count = pages.zeros((self.capacity,), np.int64)

    def grow(self, capacity: int) -> None:
        """Hold `capacity` rows, keeping the existing ones (new rows have seen nothing)."""
        old, self.capacity = self.capacity, capacity
        if self._q is not None and self._count is not None:
            self._q = pages.grown(self._q[:old], capacity)
            self._count = pages.grown(self._count[:old], capacity)

    def clear(self, row: int) -> None:
        """Forget a row's residuals (a new key, or a key dropped from the store)."""
        if self._count is not None and self._q is not None:
            self._count[row] = 0
            self._q[row] = 0.0

    def quantiles(self, rows: np.ndarray) -> np.ndarray:
        """Return the scaled-residual quantiles the rows' keys publish with, [k, bounds, width]."""
        partition = np.broadcast_to(self.partition_q, (len(rows), self.bounds, self.width))
        if self._q is None or self._count is None:
            return partition.copy()
        n = self._count[rows].astype(np.float64)[:, None, None]
        weight = n / (n + self.warmup) if self.warmup else np.ones_like(n)
        return weight * self._q[rows] + (1 - weight) * partition

    def interval_bounds(
        self, rows: np.ndarray, predictions: np.ndarray, spreads: np.ndarray
    ) -> np.ndarray:
        """Return the bounds of the rows' predictions in target units, [k, bounds, width].

        Per level the lower bound is at most the upper one (young trackers may cross).

        Args:
            rows: Each prediction's key row.
            predictions: [k, width] in target units.
            spreads: [k, width]: what each event's target was normalised with.
        """
        q = self.quantiles(rows)
        lower, upper = np.minimum(q[:, 0::2], q[:, 1::2]), np.maximum(q[:, 0::2], q[:, 1::2])
        centre, half = (lower + upper) / 2, (upper - lower) / 2
        half *= np.exp(self.log_width)[None, :, None]
        out = np.empty_like(q)
        out[:, 0::2], out[:, 1::2] = centre - half, centre + half
        return predictions[:, None, :] + out * spreads[:, None, :]

    def update(
        self,
        rows: np.ndarray,
        scores: np.ndarray,
        published: np.ndarray | None = None,
        target: np.ndarray | None = None,
    ) -> None:
        """Move the trackers by scored residuals, in one batch against the current quantiles.

        Args:
            rows: [k] key rows, repeated when a key has several residuals in the batch.
            scores: [k, width] scaled residuals (y − ŷ) / s; non-finite ones are skipped.
            published: [k, bounds × width]: the intervals published for these values (NaN:
                unknown); with `target`, they move the width factors.
            target: [k, width] the values.
        """
        if published is not None and target is not None:
            self._adjust_width(published, target)
        finite = np.isfinite(scores).all(axis=1)
        rows, scores = rows[finite], scores[finite]
        if not len(rows):
            return
        if self._q is None:
            self._allocate()
        q, count = self._q, self._count
        assert q is not None and count is not None  # allocated above
        fresh = np.unique(rows[count[rows] == 0])
        q[fresh] = self.partition_q  # a key's trackers start from the partition's
        below = scores[:, None, :] < q[rows]  # against the quantiles before this batch
        steps = self.rate * (self.taus - below)
        partition_steps = (self.taus - (scores[:, None, :] < self.partition_q)).sum(axis=0)
        np.add.at(q, rows, steps)
        np.add.at(count, rows, 1)
        self.partition_q += self.rate * PARTITION_RATE_FACTOR * partition_steps
        self.partition_count += len(rows)

    def _adjust_width(self, published: np.ndarray, target: np.ndarray) -> None:
        """Move each level's width factor by the misses of the intervals it published."""
        known = np.isfinite(published).all(axis=1) & np.isfinite(target).all(axis=1)
        if not known.any():
            return
        laid = published[known].reshape(-1, len(self.levels), 2, self.width)
        y = target[known][:, None, :]
        misses = (y < laid[:, :, 0]) | (y > laid[:, :, 1])  # [k, levels, width]
        alpha = 1.0 - np.asarray(self.levels)
        self.log_width += WIDTH_RATE * (misses.sum(axis=(0, 2)) - alpha * misses[:, 0].size)

    # ---- snapshots ----------------------------------------------------------------------

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return the rows' trackers and the partition's, as arrays for a snapshot."""
        if self._q is None or self._count is None:
            q = np.zeros((len(rows), self.bounds, self.width))
            count = np.zeros(len(rows), np.int64)
        else:
            q, count = self._q[rows], self._count[rows]
        return {
            "ci_levels": np.asarray(self.levels, np.float64),
            "ci_q": q,
            "ci_count": count,
            "ci_partition_q": self.partition_q.copy(),
            "ci_partition_count": np.asarray([self.partition_count], np.int64),
            "ci_log_width": self.log_width.copy(),
        }

    def put(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> bool:
        """Load what `take` returned into `rows`; return whether it was loaded.

        Saved trackers of other levels or widths (another configuration, or a snapshot made
        before intervals existed) are not loaded: the trackers then start afresh.

        Raises:
            ValueError: Arrays of these levels with shapes that do not fit the rows.
        """
        levels = arrays.get("ci_levels")
        if levels is None or levels.shape != (len(self.levels),):
            return False
        if not np.allclose(levels, self.levels):
            return False
        q, count = np.asarray(arrays["ci_q"]), np.asarray(arrays["ci_count"])
        partition_q = np.asarray(arrays["ci_partition_q"])
        if (
            q.shape != (len(rows), self.bounds, self.width)
            or count.shape != (len(rows),)
            or partition_q.shape != (self.bounds, self.width)
        ):
            raise ValueError(
                f"interval trackers of shape {q.shape} do not fit {len(rows)} rows of "
                f"{(self.bounds, self.width)}"
            )
        if not (np.isfinite(q).all() and np.isfinite(partition_q).all() and (count >= 0).all()):
            raise ValueError("interval trackers hold non-finite values or negative counts")
        if self._q is None:
            self._allocate()
        assert self._q is not None and self._count is not None
        self._q[rows], self._count[rows] = q, count
        self.partition_q = partition_q.astype(np.float64)
        self.partition_count = int(np.asarray(arrays["ci_partition_count"]).reshape(-1)[0])
        log_width = np.asarray(arrays.get("ci_log_width", np.zeros(len(self.levels))))
        if log_width.shape != (len(self.levels),) or not np.isfinite(log_width).all():
            raise ValueError("interval width factors do not fit the levels")
        self.log_width = log_width.astype(np.float64)
        return True
