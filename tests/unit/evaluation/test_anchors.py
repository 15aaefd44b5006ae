"""The practical anchors (AutoETS per key, global LightGBM): strictly prequential.

The leakage check changes every value after a cut and reruns: no forecast (or interval) made for
an event at or before the cut may move. A model that peeks at a future value, or whose
parameters were fitted on values after the forecast, fails it: the check is shown to catch a
forecaster that peeks one value ahead.
"""

import numpy as np
import pytest

from daemon.evaluation.anchors import AnchorRun, refit_every
from daemon.evaluation.stream import Stream

pytest.importorskip("statsforecast")
pytest.importorskip("lightgbm")

from daemon.evaluation.autoets import AutoEtsAnchor
from daemon.evaluation.global_gbm import GlobalGbmAnchor, _refit_positions

DAY = 86_400.0


def _stream(values_by_key, exogenous=True):
    """Interleave keys day by day (key order within a day), as a stream would carry them."""
    keys, ts, values, features = [], [], [], []
    days = max(len(v) for v in values_by_key.values())
    for day in range(days):
        for key, series in values_by_key.items():
            if day < len(series):
                keys.append(key)
                ts.append(day * DAY)
                values.append(series[day])
                row = [series[day], np.cos(day)] if exogenous else [series[day]]
                features.append(np.array(row))
    return Stream(keys, np.array(ts), np.array(values, float), features)


def _series(keys=4, days=120, season=4, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    return {
        f"k{i}": 50 * (i + 1)
        + 0.2 * t
        + 5 * np.sin(2 * np.pi * t / season)
        + rng.normal(0, 1, days)
        for i in range(keys)
    }


def _changed_after(stream, cut, seed=1):
    """The same stream with every value after position `cut` replaced."""
    rng = np.random.default_rng(seed)
    values = stream.values.copy()
    values[cut + 1 :] = values[cut + 1 :] * 3 + rng.normal(0, 20, len(values) - cut - 1)
    features = [f.copy() for f in stream.features]
    for i in range(cut + 1, len(values)):
        features[i][0] = values[i]
    return Stream(stream.keys, stream.ts, values, features)


def assert_no_peeking(run, stream, cuts):
    """Fail when a forecast or bound for an event at or before a cut depends on later values."""
    base = run(stream)
    for cut in cuts:
        other = run(_changed_after(stream, cut))
        np.testing.assert_array_equal(base.forecasts[: cut + 1], other.forecasts[: cut + 1])
        for level in base.lower:
            np.testing.assert_array_equal(
                base.lower[level][: cut + 1], other.lower[level][: cut + 1]
            )
            np.testing.assert_array_equal(
                base.upper[level][: cut + 1], other.upper[level][: cut + 1]
            )
        # The change is visible later: the check compares something that can move.
        assert not np.array_equal(base.forecasts[cut + 1 :], other.forecasts[cut + 1 :])


def test_the_leakage_check_catches_a_forecaster_that_peeks_one_value_ahead():
    stream = _stream(_series(keys=2, days=30))

    def peeking(s):
        forecasts = np.full((len(s.keys), 1), np.nan)
        following = {}
        for index in range(len(s.keys) - 1, -1, -1):  # each event's forecast: its next value
            key = s.keys[index]
            forecasts[index, 0] = following.get(key, s.values[index])
            following[key] = s.values[index]
        return AnchorRun(forecasts, 0.0, 0.0, 0, "peeks")

    with pytest.raises(AssertionError):
        assert_no_peeking(peeking, stream, cuts=[20])


def test_autoets_uses_nothing_after_the_forecast():
    stream = _stream(_series(keys=3, days=48))
    anchor = AutoEtsAnchor(season=4, refit=8, min_values=12)
    # Cuts inside a refit period, and one just before a key's refit.
    assert_no_peeking(anchor.run, stream, cuts=[60, 91, 110])


def test_autoets_forecasts_with_its_own_intervals_once_fitted():
    stream = _stream(_series(keys=2, days=60))
    run = AutoEtsAnchor(season=4, refit=8, min_values=12).run(stream)
    assert run.refits == 2 * len(range(12, 60, 8))  # per key: one every 8 values from the 12th
    first_fitted = 2 * 11  # both keys' 12th values: the first forecast from a model
    assert np.isnan(run.lower[0.8][: first_fitted - 2]).all()  # naive before: no interval
    fitted = np.isfinite(run.lower[0.95])
    assert fitted.sum() == 2 * (60 - 12)
    lo80, hi80 = run.lower[0.8][fitted], run.upper[0.8][fitted]
    lo95, hi95 = run.lower[0.95][fitted], run.upper[0.95][fitted]
    assert (lo95 < lo80).all() and (lo80 < run.forecasts[fitted, 0]).all()
    assert (run.forecasts[fitted, 0] < hi80).all() and (hi80 < hi95).all()
    assert "AutoETS(season_length=4" in run.description and "refit every 8" in run.description


def test_global_gbm_uses_nothing_after_the_forecast_from_any_key():
    stream = _stream(_series(keys=4, days=120))
    anchor = GlobalGbmAnchor(season=4, refit=8, params={"num_threads": 1}, rounds=20)
    # A cut changes every later value of every key: a refit after it must not move an earlier
    # forecast, and nor may one key's later values move another key's earlier forecast.
    assert_no_peeking(anchor.run, stream, cuts=[250, 333])


def test_global_gbm_refits_on_its_schedule_of_global_event_time():
    stream = _stream(_series(keys=4, days=120))
    run = GlobalGbmAnchor(season=4, refit=8, rounds=10).run(stream)
    positions = _refit_positions(stream.ts, 8 * DAY)
    # Every 8 days from the first; fits wait for 200 rows with a known target (50 days).
    assert positions.tolist() == [32 * i for i in range(1, 15)]
    assert run.refits == len([p for p in positions if p - 4 >= 200])
    assert "refit every 8 periods" in run.description and "exogenous" in run.description


def test_refits_come_in_whole_seasons_about_sixty_times():
    assert refit_every(12, 144) == 12
    assert refit_every(7, 7305) == 7 * 18
    assert refit_every(48, 17520) == 48 * 7
