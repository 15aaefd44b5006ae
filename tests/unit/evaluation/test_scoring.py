"""Scoring on toy series worked out by hand: pairs, MAE and RMSE, per key, steps ahead."""

import math

import numpy as np
import pytest

from daemon.evaluation.scoring import (
    error_summary,
    next_index,
    pair_errors,
    per_key_errors,
    rolling_mae,
    scored_pairs,
)

# Key "a": 10 12 11 15 14; key "b": 100 90 95, interleaved as a stream would carry them.
KEYS = ["a", "b", "a", "b", "a", "b", "a", "a"]
VALUES = np.array([10.0, 100.0, 12.0, 90.0, 11.0, 95.0, 15.0, 14.0])


def test_pairs_join_each_event_to_its_keys_next_event_in_stream_order():
    assert next_index(KEYS).tolist() == [2, 3, 4, 5, 6, -1, 7, -1]
    pairs = scored_pairs(KEYS)
    assert pairs.source.tolist() == [0, 1, 2, 3, 4, 6]
    assert pairs.target.tolist() == [2, 3, 4, 5, 6, 7]


def test_pairs_two_steps_ahead_skip_one_event_of_the_same_key():
    assert next_index(KEYS, steps=2).tolist() == [4, 5, 6, -1, 7, -1, -1, -1]
    pairs = scored_pairs(KEYS, steps=2)
    assert pairs.source.tolist() == [0, 1, 2, 4] and pairs.target.tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError):
        next_index(KEYS, steps=0)


def test_errors_by_hand_overall_and_per_key():
    forecasts = np.full(len(KEYS), np.nan)
    pairs = scored_pairs(KEYS)
    forecasts[pairs.source] = VALUES[pairs.source]  # the naive forecast
    errors = pair_errors(forecasts, VALUES, pairs)
    # a: |10-12| |12-11| |11-15| |15-14| = 2 1 4 1; b: |100-90| |90-95| = 10 5
    assert np.abs(errors).tolist() == [2, 10, 1, 5, 4, 1]
    summary = error_summary(errors)
    assert summary.mae == pytest.approx(23 / 6)
    assert summary.rmse == pytest.approx(math.sqrt((4 + 100 + 1 + 25 + 16 + 1) / 6))
    by_key = per_key_errors(errors, KEYS, pairs)
    assert by_key["a"].mae == pytest.approx(2.0)
    assert by_key["b"].rmse == pytest.approx(math.sqrt(125 / 2))


def test_a_horizon_column_is_scored_against_the_value_h_steps_later():
    forecasts = np.zeros((len(KEYS), 2))
    forecasts[:, 1] = 1.0
    pairs = scored_pairs(KEYS, steps=2)
    # Column 2 (value 1.0) against events 4, 5, 6, 7: 11, 95, 15, 14.
    assert pair_errors(forecasts, VALUES, pairs).tolist() == [-10.0, -94.0, -14.0, -13.0]


def test_a_missing_forecast_on_a_scored_pair_is_an_error_not_a_skip():
    pairs = scored_pairs(KEYS)
    forecasts = np.zeros(len(KEYS))
    forecasts[4] = np.nan
    with pytest.raises(ValueError, match="first at event 4"):
        pair_errors(forecasts, VALUES, pairs)


def test_rolling_mae_is_the_trailing_mean_of_absolute_errors():
    np.testing.assert_allclose(
        rolling_mae(np.array([1.0, -3.0, 2.0, -4.0]), window=2), [1.0, 2.0, 2.5, 3.0]
    )
    with pytest.raises(ValueError):
        rolling_mae(np.ones(3), window=0)
