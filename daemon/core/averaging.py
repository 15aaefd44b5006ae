"""One logical model from several replicas: the sample-weighted average of their weights.

Pure (no TensorFlow): weights are lists of NumPy arrays in the order `model.get_weights()` gives
them. Each replica trains on its own partitions and, every `model.sync_every_s`, adopts the
average of the latest weights of the live replicas, each weighted by how many samples it trained
on (federated averaging; DESIGN.md §10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Weights = list[np.ndarray]
# A replica counts as live while its last publication is younger than this many sync periods:
# one missed publication (a long step, a GC pause) is tolerated, a stopped replica is not.
LIVE_SYNC_PERIODS = 3


@dataclass(frozen=True)
class ReplicaWeights:
    """One replica's published weights."""

    replica_id: str
    sample_count: int
    weights: Weights
    version: int
    time: float  # wall clock of publication, epoch seconds


def live(
    replicas: Sequence[ReplicaWeights], now: float, sync_every_s: float
) -> list[ReplicaWeights]:
    """Return the replicas that published within `LIVE_SYNC_PERIODS` sync periods of `now`."""
    horizon = LIVE_SYNC_PERIODS * sync_every_s
    return [r for r in replicas if now - r.time <= horizon]


def weighted_average(weight_lists: Sequence[Weights], sample_counts: Sequence[int]) -> Weights:
    """Return the element-wise average of weight lists, each weighted by its sample count.

    Args:
        weight_lists: one list of arrays per replica, all of the same shapes.
        sample_counts: samples each replica trained on; all zero averages with equal weights.

    Raises:
        ValueError: no lists, counts that do not match, negative counts, or shapes that differ.
    """
    if not weight_lists or len(weight_lists) != len(sample_counts):
        raise ValueError("need one sample count per weight list, and at least one list")
    counts = np.asarray(sample_counts, dtype=np.float64)
    if (counts < 0).any():
        raise ValueError("sample counts must not be negative")
    shares = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
    first = weight_lists[0]
    for other in weight_lists[1:]:
        if [a.shape for a in other] != [a.shape for a in first]:
            raise ValueError("replicas' weights differ in shape: are the model settings the same?")
    return [
        sum(
            share * lst[i].astype(np.float64)
            for share, lst in zip(shares, weight_lists, strict=True)
        ).astype(first[i].dtype)
        for i in range(len(first))
    ]


def divergence(weights: Weights, average: Weights) -> float:
    """Return the L2 norm of `weights - average` over all arrays (the divergence metric)."""
    return float(
        np.sqrt(
            sum(
                np.sum((w.astype(np.float64) - a) ** 2)
                for w, a in zip(weights, average, strict=True)
            )
        )
    )
