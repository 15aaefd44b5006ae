"""RollingMAE and RollingPrequential: the mean of the last N errors, exact and O(1)."""

import math
import random

import numpy as np
import pytest

from daemon.core.prequential import RollingMAE, RollingPrequential


def test_mean_of_the_values_so_far_until_the_window_is_full():
    mae = RollingMAE(4)
    assert math.isnan(mae.value) and mae.count == 0
    mae.add(1.0)
    mae.add([2.0, 3.0])
    assert mae.count == 3
    assert mae.value == pytest.approx(2.0)


def test_only_the_last_n_values_count():
    mae = RollingMAE(3)
    mae.add([100.0, 100.0, 1.0, 2.0, 3.0])
    assert mae.count == 3
    assert mae.value == pytest.approx(2.0)


def test_matches_a_recomputed_mean_over_many_updates():
    rng = random.Random(0)
    mae = RollingMAE(50)
    values = []
    for _ in range(10_000):
        # Mixed magnitudes make running-sum rounding drift visible if it were not bounded.
        value = rng.choice([1e-6, 1.0, 1e6]) * rng.random()
        values.append(value)
        mae.add(value)
    assert mae.value == pytest.approx(math.fsum(values[-50:]) / 50, rel=1e-12)


def test_a_nan_spoils_the_mean_only_while_it_is_in_the_window():
    mae = RollingMAE(3)
    mae.add([1.0, float("nan"), 1.0])
    assert math.isnan(mae.value)
    mae.add(1.0)  # the NaN is still one of the last three
    assert math.isnan(mae.value)
    mae.add(4.0)
    assert mae.value == pytest.approx(2.0)


def test_numpy_scalars_and_arrays_are_accepted():
    mae = RollingMAE(4)
    mae.add(np.float32(2.0))
    mae.add(np.array([4.0, 6.0]))
    assert mae.value == pytest.approx(4.0)


def test_window_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        RollingMAE(0)


def test_rolling_prequential_scores_model_and_naive_on_the_same_targets():
    pre = RollingPrequential(2)
    assert math.isnan(pre.model_mae) and math.isnan(pre.naive_mae)
    target = np.array([10.0])
    pre.add(np.array([100.0]), np.array([100.0]), target)  # pushed out below
    pre.add(np.array([11.0]), np.array([13.0]), target)
    pre.add(np.array([9.0]), np.array([7.0]), target)
    assert pre.model_mae == pytest.approx(1.0)
    assert pre.naive_mae == pytest.approx(3.0)


def test_rolling_prequential_counts_each_target_value():
    pre = RollingPrequential(4)
    pre.add(np.array([1.0, 2.0]), np.array([0.0, 0.0]), np.array([0.0, 0.0]))
    assert pre.model.count == 2
    assert pre.model_mae == pytest.approx(1.5)
    assert pre.naive_mae == 0.0
