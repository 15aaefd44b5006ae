"""Baselines by hand, the prequential order, and River's SNARIMAX as River builds it."""

import numpy as np
import pytest

from daemon.evaluation.baselines import (
    NaiveLast,
    RiverSnarimax,
    SeasonalNaive,
    make_baseline,
    prequential_forecasts,
)
from daemon.evaluation.scoring import error_summary, pair_errors, per_key_errors, scored_pairs

KEYS = ["a", "b", "a", "b", "a", "b", "a", "a"]
VALUES = np.array([10.0, 100.0, 12.0, 90.0, 11.0, 95.0, 15.0, 14.0])


def _errors(model, horizon=1):
    forecasts = prequential_forecasts(model, KEYS, VALUES, horizon)
    pairs = scored_pairs(KEYS)
    return pair_errors(forecasts, VALUES, pairs), pairs, forecasts


def test_naive_last_value_forecasts_every_step_as_the_last_value():
    errors, _, forecasts = _errors(NaiveLast(), horizon=3)
    assert np.abs(errors).tolist() == [2, 10, 1, 5, 4, 1]
    assert forecasts[0].tolist() == [10.0, 10.0, 10.0]
    assert np.isnan(forecasts[[5, 7]]).all()  # each key's last event: nothing to score


def test_seasonal_naive_errors_by_hand():
    errors, pairs, _ = _errors(SeasonalNaive(season=2))
    # a, season 2: 12 <- 10 (one value so far: last value), 11 <- 10, 15 <- 12, 14 <- 11.
    # b: 90 <- 100 (last value), 95 <- 100.
    by_key = per_key_errors(errors, KEYS, pairs)
    assert by_key["a"].mae == pytest.approx((2 + 1 + 3 + 3) / 4)
    assert by_key["b"].mae == pytest.approx((10 + 5) / 2)
    assert error_summary(errors).mae == pytest.approx(24 / 6)


def test_seasonal_naive_steps_ahead_reach_back_whole_seasons():
    model = SeasonalNaive(season=3)
    for value in [1.0, 2.0, 3.0, 4.0]:
        model.learn_one("k", value)
    # Next values are the 5th, 6th, 7th, 8th: one season back 2, 3, 4, then 2 again (5th - 3).
    assert model.forecast("k", 4).tolist() == [2.0, 3.0, 4.0, 2.0]
    assert model.describe() == "seasonal naive (m=3)"


class Recorder:
    """Records every call; forecasts 1000 + the last value it learnt for the key."""

    def __init__(self):
        self.calls = []
        self.last = {}

    def forecast(self, key, horizon):
        self.calls.append(("forecast", key))
        return np.full(horizon, 1000.0 + self.last[key])

    def learn_one(self, key, value):
        self.calls.append(("learn", key, value))
        self.last[key] = value

    def describe(self):
        return "recorder"


def test_prequential_order_predicts_before_learning_and_scores_t_against_t_plus_1():
    model = Recorder()
    errors, pairs, _ = _errors(model)
    seen = set()
    learns = [i for i, call in enumerate(model.calls) if call[0] == "learn"]
    assert len(learns) == len(KEYS)
    for position, key, value in zip(learns, KEYS, VALUES, strict=True):
        assert model.calls[position] == ("learn", key, value)
        if key in seen:  # a forecast of this very value came just before it was learnt
            assert model.calls[position - 1] == ("forecast", key)
        seen.add(key)
    np.testing.assert_allclose(errors, 1000.0 + VALUES[pairs.source] - VALUES[pairs.target])


@pytest.mark.parametrize(
    ("clip", "regressor_name"),
    [
        (None, "LinearRegression(SGD 0.001)"),
        (0.5, "LinearRegression(SGD 0.001, clip_gradient 0.5)"),
    ],
)
def test_river_snarimax_matches_a_direct_river_loop_and_names_its_configuration(
    clip: float | None, regressor_name: str
):
    pytest.importorskip("river")
    from river import linear_model, optim, preprocessing, time_series

    model = RiverSnarimax.seasonal(m=2, clip_gradient=clip)
    assert model.describe() == (
        f"River SNARIMAX(3,1,2)(1,0,1)2, StandardScaler | {regressor_name}, one per key"
    )
    ours = prequential_forecasts(model, KEYS, VALUES, horizon=2)
    for key in ("a", "b"):
        direct = time_series.SNARIMAX(
            p=3,
            d=1,
            q=2,
            m=2,
            sp=1,
            sd=0,
            sq=1,
            regressor=preprocessing.StandardScaler()
            | linear_model.LinearRegression(
                optimizer=optim.SGD(0.001), **({} if clip is None else {"clip_gradient": clip})
            ),
        )
        indices = [i for i, k in enumerate(KEYS) if k == key]
        expected = []
        for index in indices:
            direct.learn_one(VALUES[index])
            expected.append(direct.forecast(horizon=2))
        np.testing.assert_allclose(ours[indices[:-1]], expected[:-1])
    assert make_baseline("snarimax", 7, 0.001).describe().startswith("River SNARIMAX(7,1,7), ")
    clipped = make_baseline("snarimax_seasonal_clipped", 7, 0.001).describe()
    assert clipped.startswith("River SNARIMAX(3,1,2)(1,0,1)7, ") and "clip_gradient 1)" in clipped
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("arima", 7, 0.001)
