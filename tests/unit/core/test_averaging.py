"""Sample-weighted averaging of replicas' weights, and which replicas count as live."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.core.averaging import ReplicaWeights, divergence, live, weighted_average


def test_average_is_exact_on_hand_made_arrays() -> None:
    a = [np.array([[1.0, 2.0]], dtype=np.float32), np.array([10.0], dtype=np.float32)]
    b = [np.array([[4.0, 8.0]], dtype=np.float32), np.array([-2.0], dtype=np.float32)]
    # 1 sample vs 3 samples: (1*a + 3*b) / 4.
    average = weighted_average([a, b], [1, 3])
    np.testing.assert_array_equal(average[0], np.array([[3.25, 6.5]], dtype=np.float32))
    np.testing.assert_array_equal(average[1], np.array([1.0], dtype=np.float32))
    assert [w.dtype for w in average] == [np.float32, np.float32]


def test_one_replica_is_its_own_average_and_zero_counts_weigh_equally() -> None:
    a = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    np.testing.assert_array_equal(weighted_average([a], [17])[0], a[0])
    b = [np.full((2, 3), 2.0, dtype=np.float32)]
    np.testing.assert_array_equal(weighted_average([a, b], [0, 0])[0], (a[0] + b[0]) / 2)


def test_mismatched_inputs_are_refused() -> None:
    a = [np.zeros((2, 3))]
    with pytest.raises(ValueError, match="shape"):
        weighted_average([a, [np.zeros((3, 2))]], [1, 1])
    with pytest.raises(ValueError, match="one sample count"):
        weighted_average([a], [1, 2])
    with pytest.raises(ValueError, match="negative"):
        weighted_average([a, a], [1, -1])


def test_divergence_is_the_l2_norm_over_all_arrays() -> None:
    w = [np.array([3.0, 0.0]), np.array([[4.0]])]
    avg = [np.zeros(2), np.zeros((1, 1))]
    assert divergence(w, avg) == 5.0
    assert divergence(avg, avg) == 0.0


def test_live_keeps_replicas_that_published_within_three_sync_periods() -> None:
    def replica(name: str, at: float) -> ReplicaWeights:
        return ReplicaWeights(name, 1, [np.zeros(1)], 1, at)

    now = 1000.0
    replicas = [replica("fresh", now - 1), replica("edge", now - 30), replica("stale", now - 31)]
    assert [r.replica_id for r in live(replicas, now, sync_every_s=10)] == ["fresh", "edge"]
