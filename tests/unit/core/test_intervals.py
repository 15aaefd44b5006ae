"""Interval calibration: per-key error scales, partition quantiles tracked on what was
published, the snapshot arrays, and the learner's published intervals (toy model)."""

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.intervals import IntervalCalibrator, bound_quantiles
from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_learner, import_learner
from daemon.core.prequential import IntervalScores
from daemon.settings import IntervalSettings, ModelSettings, Settings, StreamSettings

ONE = np.ones((1, 1))
WARM = np.array([False])


def _step(calibrator, rows, errors, spreads=None, cold=None):
    """Publish intervals around a prediction of 0, then learn the values; return hits [2, k]."""
    k = len(rows)
    spreads = np.ones((k, 1)) if spreads is None else spreads
    cold = np.zeros(k, bool) if cold is None else cold
    bounds = calibrator.interval_bounds(rows, np.zeros((k, 1)), spreads, cold)
    hits = [
        (bounds[:, 2 * i, 0] <= errors[:, 0]) & (errors[:, 0] <= bounds[:, 2 * i + 1, 0])
        for i in range(2)
    ]
    calibrator.update(rows, errors, spreads, cold, bounds.reshape(k, -1), errors)
    return np.array(hits)


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, n: rng.standard_t(3, n) * 0.3,  # heavy tails, narrower than the prior
        lambda rng, n: rng.exponential(2.0, n) - 1.0,  # skewed, wider than the prior
        lambda rng, n: rng.normal(0, 1, n) * np.linspace(0.5, 3, n),  # a spread that drifts
    ],
)
def test_one_key_is_covered_at_its_levels_whatever_the_errors(draw):
    calibrator = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=20, capacity=4)
    errors = draw(np.random.default_rng(0), 20_000)
    hits = [_step(calibrator, np.array([0]), np.array([[e]])) for e in errors]
    assert np.mean(np.concatenate(hits, axis=1), axis=1) == pytest.approx([0.8, 0.95], abs=0.01)


def test_many_young_keys_of_different_scales_are_covered_in_batches():
    # 400 short keys whose errors differ in scale 100-fold, 60 values each on average, 32 keys
    # per batch: each key's scale is its own within a few values; the partition's coverage
    # holds.
    rng = np.random.default_rng(1)
    calibrator = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=5, capacity=400)
    scales = 10 ** rng.uniform(-1, 1, 400)
    hits = []
    for _ in range(750):
        rows = rng.choice(400, 32, replace=False)
        errors = rng.standard_t(4, 32)[:, None] * scales[rows, None]
        hits.append(_step(calibrator, rows, errors))
    assert np.mean(np.concatenate(hits, axis=1), axis=1) == pytest.approx([0.8, 0.95], abs=0.02)


def test_without_errors_the_bounds_are_normal_quantiles_of_the_spread():
    calibrator = IntervalCalibrator((0.8,), width=2, rate=0.05, warmup=20, capacity=4)
    bounds = calibrator.interval_bounds(
        np.array([1]), np.array([[10.0, 100.0]]), np.array([[1.0, 10.0]]), WARM
    )
    # The prior scale is 0.8 spreads, and the quantiles start at z / 0.8: z spreads.
    assert bounds[0, :, 0] == pytest.approx([10 - 1.2816, 10 + 1.2816], abs=1e-3)
    assert bounds[0, :, 1] == pytest.approx([100 - 12.816, 100 + 12.816], abs=1e-2)
    assert bound_quantiles((0.8, 0.95)) == pytest.approx([0.1, 0.9, 0.025, 0.975])


def test_a_key_scale_follows_its_errors_and_a_cleared_row_starts_over():
    calibrator = IntervalCalibrator((0.8,), width=1, rate=0.05, warmup=5, capacity=4)
    for error in [10.0, -10.0, 10.0] * 20:
        calibrator.update(
            np.array([2]), np.array([[error]]), ONE, WARM, np.full((1, 2), np.nan), ONE
        )
    assert calibrator.scales(np.array([2]), ONE, WARM)[0, 0] == pytest.approx(
        (60 * 10 + 5 * 0.8 * calibrator.ratio[0, 0] / 0.8 * 0.8) / 65, rel=0.05
    )
    calibrator.clear(2)
    assert calibrator.scales(np.array([2]), ONE, WARM)[0, 0] == pytest.approx(
        calibrator.ratio[0, 0]
    )


def test_cold_events_keep_a_ratio_of_their_own():
    calibrator = IntervalCalibrator((0.8,), width=1, rate=0.05, warmup=5, capacity=4)
    # Cold events' spread is the key's level: their errors are a small share of it.
    for _ in range(2000):
        cold = np.array([True])
        calibrator.update(
            np.array([0]),
            np.array([[1.0]]),
            np.array([[100.0]]),
            cold,
            np.full((1, 2), np.nan),
            ONE,
        )
    assert calibrator.ratio[1, 0] == pytest.approx(0.01, rel=0.01)  # from 0.8, 0.99 a step
    assert calibrator.ratio[0, 0] == pytest.approx(0.8)  # warm events' untouched


def test_repeated_rows_in_one_batch_update_the_scale_in_order():
    calibrator = IntervalCalibrator((0.8,), width=1, rate=0.05, warmup=0, capacity=2)
    nan = np.full((3, 2), np.nan)
    calibrator.update(
        np.array([0, 1, 0]),
        np.array([[4.0], [1.0], [2.0]]),
        np.ones((3, 1)),
        np.zeros(3, bool),
        nan,
        np.ones((3, 1)),
    )
    # Key 0: starts at |4|, then 4 + 0.1 (2 - 4).
    assert calibrator.scales(np.array([0, 1]), np.ones((2, 1)), np.zeros(2, bool))[
        :, 0
    ] == pytest.approx([3.8, 1.0])


def test_snapshot_arrays_round_trip_and_refuse_other_shapes():
    calibrator = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=5, capacity=8)
    for _ in range(3):
        _step(calibrator, np.array([0, 3, 3]), np.array([[1.0], [-2.0], [0.5]]))
    rows = np.array([0, 3])
    saved = calibrator.take(rows)
    fresh = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=5, capacity=8)
    assert fresh.put(np.array([1, 2]), saved)
    spreads, cold = np.ones((2, 1)), np.zeros(2, bool)
    np.testing.assert_array_equal(
        fresh.interval_bounds(np.array([1, 2]), np.zeros((2, 1)), spreads, cold),
        calibrator.interval_bounds(rows, np.zeros((2, 1)), spreads, cold),
    )
    other_levels = IntervalCalibrator((0.9,), width=1, rate=0.05, warmup=5, capacity=8)
    assert not other_levels.put(np.array([1, 2]), saved)  # another configuration: start afresh
    assert not fresh.put(np.array([1, 2]), {})  # saved before intervals existed
    with pytest.raises(ValueError, match="does not fit"):
        fresh.put(np.array([1, 2, 3]), saved)
    saved["ci_q"][0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fresh.put(np.array([1, 2]), saved)


def test_interval_scores_count_coverage_and_winkler_by_hand():
    scores = IntervalScores((0.8,), window=10)
    bounds = np.array([[9.0, 11.0], [9.0, 11.0], [np.nan, np.nan]])
    scores.add(bounds, np.array([[10.0], [12.0], [10.0]]))  # hit, miss by 1, unknown
    assert scores.coverage() == {0.8: 0.5}
    # Width 2 each, plus 2/0.2 x 1 for the miss.
    assert scores.interval_score()[0.8] == pytest.approx((2 + 2 + 10) / 2)
    assert scores.rolling_coverage()[0.8] == pytest.approx(0.5)


def _settings(levels=(0.8, 0.95)):
    return Settings(
        model=ModelSettings(n_features=2, n_targets=1, target_index=(0,), batch_size=3, window=3),
        stream=StreamSettings(max_batch_wait_ms=0),
        intervals=IntervalSettings(levels=levels),
    )


def _events(days=40, seed=0, change=None):
    rng = np.random.default_rng(seed)
    events = [
        Event(
            key, float(day), np.array([10 * (i + 1) + np.sin(day) + rng.normal(0, 0.3), 1.0]), None
        )
        for day in range(days)
        for i, key in enumerate("abcd")
    ]
    if change is not None:
        events[change] = Event(events[change].key, events[change].ts, np.array([500.0, 1.0]), None)
    return events


def _feed(learner, events, poll=5, start=0, drain=True):
    out = {}
    for offset, event in enumerate(events, start=start):
        assert learner.ingest(event, 0, offset) is None
        if offset % poll == poll - 1:
            learner.end_of_poll()
        out.update({p.offset: p for p in learner.take_outbox()})
    if drain:
        learner.drain()
        out.update({p.offset: p for p in learner.take_outbox()})
    return out


def _learner(settings):
    return OnlineLearner(settings, ToyModel.for_settings(settings), clock=lambda: 0.0)


@pytest.mark.parametrize("poll", [1, 6])
def test_an_interval_for_t_uses_nothing_after_t(poll):
    settings = _settings()
    base = _feed(_learner(settings), _events(), poll)
    for change in (41, 90):
        other = _feed(_learner(settings), _events(change=change), poll)
        for offset in range(change):
            np.testing.assert_array_equal(base[offset].intervals, other[offset].intervals)
        # The outlier's residual reaches its key's trackers: later intervals move.
        assert any(
            not np.array_equal(base[o].intervals, other[o].intervals)
            for o in range(change + 8, len(base))
        )


def test_every_prediction_carries_ordered_bounds_and_the_learner_scores_them():
    learner = _learner(_settings())
    published = _feed(learner, _events())
    assert len(published) == 160
    for prediction in published.values():
        assert prediction.levels == (0.8, 0.95)
        assert prediction.intervals.shape == (2, 2, 1)
        (lo80, hi80), (lo95, hi95) = prediction.intervals[:, :, 0]
        assert lo95 <= lo80 <= hi80 <= hi95
    coverage = learner.interval_scores.coverage()
    assert set(coverage) == {0.8, 0.95} and 0 < coverage[0.8] <= coverage[0.95] <= 1
    assert learner.interval_scores.count == learner.prequential.count


def test_no_levels_means_no_intervals_anywhere():
    learner = _learner(_settings(levels=()))
    published = _feed(learner, _events(days=5))
    assert all(p.intervals is None for p in published.values())
    assert learner.stores[0].intervals is None


def test_a_restored_learner_publishes_the_same_intervals():
    settings = _settings()
    events = _events(days=40)
    expected = _feed(_learner(settings), events)
    first = _learner(settings)
    head = _feed(first, events[:83], drain=False)  # stops mid-stream, with pending events
    parts, meta = export_learner(first)
    assert {"ci_q", "ci_scale", "ci_count", "ci_ratio", "ev_bounds"} <= set(parts[0][0])
    second = _learner(settings)
    import_learner(second, parts, meta, now=0.0)
    tail = _feed(second, events[83:], start=83)
    assert sorted({**head, **tail}) == sorted(expected)
    for offset, prediction in {**head, **tail}.items():
        np.testing.assert_array_equal(prediction.intervals, expected[offset].intervals)
    assert second.interval_scores.count == expected_count(settings, events)


def expected_count(settings, events):
    learner = _learner(settings)
    _feed(learner, events)
    return learner.interval_scores.count
