"""Smoothed features: seasonal naive changes, smoothed growth, levels and drift, by hand."""

import itertools

import numpy as np
import pytest

from daemon.core.smoothing import (
    DRIFT_RATE,
    FAST_RATE,
    GROWTH_RATE,
    SLOW_RATE,
    SmoothedFeatures,
)


def _observe(smoothing, values, season):
    """Feed one key its values with lags as the derived features give them; return features."""
    out = []
    for t, value in enumerate(values):
        count = t + 1  # values seen, this one included
        back = t + 1 - season if count >= season else t  # the lag for the next value
        step = values[back] - values[back - 1] if back >= 1 else 0.0
        last_step = value - values[t - 1] if t else 0.0
        features = np.empty(smoothing.width)
        smoothing.observe_into(
            0,
            np.array([value]),
            np.array([[values[back]]]),
            np.array([[step], [last_step]]),
            season,
            features,
        )
        out.append(features)
    return np.array(out)


def test_features_by_hand_for_a_seasonal_series():
    smoothing = SmoothedFeatures(slots=1, n_targets=1, capacity=2)
    assert smoothing.width == 9 and smoothing.names[0] == "smooth_seasonal_naive1[0]"
    values = [10.0, 20.0, 13.0, 24.0, 15.0]  # season 2, growing by 3-4 a season
    f = _observe(smoothing, values, season=2)
    # Seasonal naive change for the next value: lag_2 - y_t; and the change a season back.
    assert f[:, 0].tolist() == [0.0, -10.0, 7.0, -11.0, 9.0]
    assert f[:, 1].tolist() == [0.0, 0.0, 10.0, -7.0, 11.0]
    assert f[:, 6].tolist() == [0.0, 10.0, -7.0, 11.0, -9.0]  # the last step
    # Growth: seasonal differences from t = 2 on (13-10, 24-20, 15-13), smoothed from 0.
    growth = 0.0
    for diff in (3.0, 4.0, 2.0):
        growth += GROWTH_RATE * (diff - growth)
    assert f[-1, 2] == pytest.approx(values[3] + growth - values[4])
    fast = slow = 10.0
    drift = 0.0
    for last, value in itertools.pairwise(values):
        fast += FAST_RATE * (value - fast)
        slow += SLOW_RATE * (value - slow)
        drift += DRIFT_RATE * (value - last - drift)
    assert f[-1, 3:6].tolist() == pytest.approx([fast - 15.0, slow - 15.0, drift])


def test_nothing_but_the_key_own_values_so_far_and_a_cleared_row_starts_over():
    smoothing = SmoothedFeatures(slots=1, n_targets=1, capacity=2)
    first = _observe(smoothing, [5.0, 6.0, 7.0], season=2)
    smoothing.clear_row(0)
    again = _observe(smoothing, [5.0, 6.0, 7.0], season=2)
    np.testing.assert_array_equal(first, again)
    assert first[0].tolist() == [0.0] * 9  # one value: no change to forecast


def test_rows_round_trip_through_take_and_put():
    smoothing = SmoothedFeatures(slots=2, n_targets=2, capacity=4)
    out = np.empty(smoothing.width)
    steps = np.zeros((3, 2))
    smoothing.observe_into(
        3, np.array([1.0, 2.0]), np.array([[1.0, 2.0], [1.0, 2.0]]), steps, 0, out
    )
    smoothing.observe_into(
        3, np.array([3.0, 1.0]), np.array([[1.0, 2.0], [3.0, 1.0]]), steps, 0, out
    )
    other = SmoothedFeatures(slots=2, n_targets=2, capacity=4)
    other.put(np.array([0]), smoothing.take(np.array([3])))
    a, b = np.empty(smoothing.width), np.empty(smoothing.width)
    lags = np.array([[3.0, 1.0], [2.0, 2.0]])
    smoothing.observe_into(3, np.array([4.0, 0.0]), lags, steps, 0, a)
    other.observe_into(0, np.array([4.0, 0.0]), lags, steps, 0, b)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        other.put(np.array([0, 1]), smoothing.take(np.array([3])))


def test_the_base_is_the_candidate_with_the_lowest_recent_errors():
    smoothing = SmoothedFeatures(slots=1, n_targets=1, capacity=1)
    values = [10.0 + 8.0 * (t % 4 == 0) + 0.5 * t for t in range(40)]  # season 4, a trend
    f = _observe(smoothing, values, season=4)
    # Growth tracks the trend: seasonal naive with growth has the lowest errors.
    assert f[-1, 8] == pytest.approx(f[-1, 2])
    assert smoothing.base(0)[0] == pytest.approx(values[-1] + f[-1, 2])
    flat = SmoothedFeatures(slots=1, n_targets=1, capacity=1)
    f = _observe(flat, [5.0] * 3, season=4)
    assert flat.base(0)[0] == 5.0 and f[-1, 8] == 0.0  # young: the naive forecast
