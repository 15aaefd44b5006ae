"""Per-key normalisation: running moments are exact and keys of any scale end near unit scale."""

import numpy as np

from daemon.core.scaling import CLIP_SIGMAS, RunningStats, denormalise, normalise


def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(500.0, 40.0, size=(200, 3))
    stats = RunningStats(3)
    for row in values:
        stats.update(row)
    location, spread = stats.scale()
    np.testing.assert_allclose(location, values.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(spread, values.std(axis=0), rtol=1e-10)


def test_keys_differing_100x_in_scale_normalise_alike():
    rng = np.random.default_rng(1)
    base = rng.normal(0.0, 1.0, size=(300, 1))
    small, large = RunningStats(1), RunningStats(1)
    for row in base:
        small.update(10 + 2 * row)
        large.update(1000 + 200 * row)
    z_small = normalise(10 + 2 * base[-1], *small.scale())
    z_large = normalise(1000 + 200 * base[-1], *large.scale())
    np.testing.assert_allclose(z_small, z_large, rtol=1e-9)


def test_normalise_round_trips_and_clips():
    location, spread = np.array([5.0]), np.array([2.0])
    value = np.array([8.0])
    np.testing.assert_allclose(
        denormalise(normalise(value, location, spread), location, spread), value
    )
    assert normalise(np.array([1e9]), location, spread)[0] == CLIP_SIGMAS


def test_constant_feature_does_not_divide_by_zero():
    stats = RunningStats(1)
    for _ in range(10):
        stats.update(np.array([0.0]))
    z = normalise(np.array([1.0]), *stats.scale())
    assert np.isfinite(z).all() and abs(z[0]) <= CLIP_SIGMAS


def test_stats_round_trip_through_arrays():
    stats = RunningStats(2)
    stats.update(np.array([1.0, 2.0]))
    stats.update(np.array([3.0, 5.0]))
    copy = RunningStats.from_arrays(*stats.to_arrays())
    assert copy.count == 2
    np.testing.assert_array_equal(copy.scale()[1], stats.scale()[1])
