"""Interval calibration: quantile tracking per key, the partition's stand-in for young keys, the
snapshot arrays, and the learner's published intervals (toy model)."""

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.intervals import IntervalCalibrator, bound_quantiles
from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_learner, import_learner
from daemon.core.prequential import IntervalScores
from daemon.settings import IntervalSettings, ModelSettings, Settings, StreamSettings


def _coverage(calibrator, residuals, rows=None):
    """Publish before learning each residual (prediction 0, spread 1); return the hit rate."""
    rows = np.zeros(len(residuals), np.int64) if rows is None else rows
    hits = []
    for row, r in zip(rows, residuals, strict=True):
        bounds = calibrator.interval_bounds(np.array([row]), np.zeros((1, 1)), np.ones((1, 1)))
        hits.append([bounds[0, 2 * i, 0] <= r <= bounds[0, 2 * i + 1, 0] for i in range(2)])
        calibrator.update(np.array([row]), np.array([[r]]))
    return np.mean(hits, axis=0)


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, n: rng.standard_t(3, n) * 0.3,  # heavy tails, narrower than the prior
        lambda rng, n: rng.exponential(2.0, n) - 1.0,  # skewed, wider than the prior
        lambda rng, n: rng.normal(0, 1, n) * np.linspace(0.5, 3, n),  # a spread that drifts
    ],
)
def test_a_key_tracker_covers_its_levels_whatever_the_residuals(draw):
    calibrator = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=20, capacity=4)
    coverage = _coverage(calibrator, draw(np.random.default_rng(0), 20_000))
    assert coverage == pytest.approx([0.8, 0.95], abs=0.01)


def test_without_residuals_the_bounds_are_the_normal_quantiles_of_the_spread():
    calibrator = IntervalCalibrator((0.8,), width=2, rate=0.05, warmup=20, capacity=4)
    bounds = calibrator.interval_bounds(
        np.array([1]), np.array([[10.0, 100.0]]), np.array([[1.0, 10.0]])
    )
    assert bounds[0, :, 0] == pytest.approx([10 - 1.2816, 10 + 1.2816], abs=1e-3)
    assert bounds[0, :, 1] == pytest.approx([100 - 12.816, 100 + 12.816], abs=1e-2)
    assert bound_quantiles((0.8, 0.95)) == pytest.approx([0.1, 0.9, 0.025, 0.975])


def test_a_young_key_leans_on_the_partition_then_on_its_own_residuals():
    calibrator = IntervalCalibrator((0.8,), width=1, rate=0.05, warmup=20, capacity=4)
    rng = np.random.default_rng(0)
    # Key 0 is noisy (scaled residuals of spread 3): the partition learns wide intervals.
    for r in rng.normal(0, 3, 3000):
        calibrator.update(np.array([0]), np.array([[r]]))
    wide = calibrator.quantiles(np.array([1]))[0, 1, 0]
    assert wide > 2.5  # a new key starts from the partition's
    # Key 1's own residuals are tight; after many, its interval is its own.
    for r in rng.normal(0, 0.1, 3000):
        calibrator.update(np.array([1]), np.array([[r]]))
    assert calibrator.quantiles(np.array([1]))[0, 1, 0] < 0.3
    assert calibrator.quantiles(np.array([0]))[0, 1, 0] > 2.5
    calibrator.clear(1)  # a dropped key's row starts over from the partition
    assert calibrator.quantiles(np.array([1]))[0, 1, 0] == pytest.approx(
        calibrator.partition_q[1, 0]
    )


def test_repeated_rows_in_one_batch_each_move_their_key():
    one = IntervalCalibrator((0.8,), width=1, rate=0.05, warmup=0, capacity=2)
    one.update(np.array([0, 0, 1]), np.array([[5.0], [5.0], [-5.0]]))
    q = one.quantiles(np.array([0, 1]))
    start = one.partition_q  # moved too, by three residuals at a tenth of the rate
    assert q[0, 1, 0] > q[1, 1, 0] and q[0, 0, 0] > q[1, 0, 0]
    assert np.isfinite(start).all()


def test_snapshot_arrays_round_trip_and_refuse_other_shapes():
    calibrator = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=5, capacity=8)
    calibrator.update(np.array([0, 3, 3]), np.array([[1.0], [-2.0], [0.5]]))
    rows = np.array([0, 3])
    saved = calibrator.take(rows)
    fresh = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=5, capacity=8)
    assert fresh.put(np.array([1, 2]), saved)
    np.testing.assert_array_equal(fresh.quantiles(np.array([1, 2])), calibrator.quantiles(rows))
    other_levels = IntervalCalibrator((0.9,), width=1, rate=0.05, warmup=5, capacity=8)
    assert not other_levels.put(np.array([1, 2]), saved)  # another configuration: start afresh
    assert not fresh.put(np.array([1, 2]), {})  # saved before intervals existed
    with pytest.raises(ValueError, match="do not fit"):
        fresh.put(np.array([1, 2, 3]), saved)
    saved["ci_q"][0, 0, 0] = np.nan
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
    assert {"ci_q", "ci_count", "ci_partition_q", "ev_bounds"} <= set(parts[0][0])
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


def test_the_width_factor_brings_many_young_keys_to_nominal_coverage():
    # 400 short keys whose scaled residuals differ in spread (0.3 to 3): each key's own
    # trackers see 60 residuals, too few to converge; the published coverage still holds.
    rng = np.random.default_rng(1)
    calibrator = IntervalCalibrator((0.8, 0.95), width=1, rate=0.05, warmup=20, capacity=400)
    spreads = rng.uniform(0.3, 3.0, 400)
    hits = []
    for _ in range(60):
        rows = rng.permutation(400)
        residuals = rng.standard_t(4, 400)[:, None] * spreads[rows, None]
        bounds = calibrator.interval_bounds(rows, np.zeros((400, 1)), np.ones((400, 1)))
        hits.append(
            [
                (bounds[:, 2 * i, 0] <= residuals[:, 0])
                & (residuals[:, 0] <= bounds[:, 2 * i + 1, 0])
                for i in range(2)
            ]
        )
        calibrator.update(rows, residuals, bounds.reshape(400, -1), residuals)
    coverage = np.mean(np.concatenate(hits, axis=1), axis=1)
    assert coverage == pytest.approx([0.8, 0.95], abs=0.02)
