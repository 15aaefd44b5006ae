"""Per-key normalisation: running moments are exact per row, rows are independent, and keys of
any scale end near unit scale."""

import numpy as np
import pytest

from daemon.core.scaling import CLIP_SIGMAS, StatsColumns, denormalise, normalise, normalise_one


def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(500.0, 40.0, size=(200, 3))
    stats = StatsColumns(3, capacity=4)
    for value in values:
        stats.update(2, value)
    location, spread = stats.scale(2)
    np.testing.assert_allclose(location, values.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(spread, values.std(axis=0), rtol=1e-10)
    assert stats.count.tolist() == [0, 0, 200, 0]  # the other rows are untouched


def test_keys_differing_100x_in_scale_normalise_alike():
    rng = np.random.default_rng(1)
    base = rng.normal(0.0, 1.0, size=(300, 1))
    stats = StatsColumns(1, capacity=2)
    for value in base:
        stats.update(0, 10 + 2 * value)
        stats.update(1, 1000 + 200 * value)
    z_small = normalise(10 + 2 * base[-1], *stats.scale(0))
    z_large = normalise(1000 + 200 * base[-1], *stats.scale(1))
    np.testing.assert_allclose(z_small, z_large, rtol=1e-9)


def test_normalise_round_trips_and_clips():
    location, spread = np.array([5.0]), np.array([2.0])
    value = np.array([8.0])
    np.testing.assert_allclose(
        denormalise(normalise(value, location, spread), location, spread), value
    )
    assert normalise(np.array([1e9]), location, spread)[0] == CLIP_SIGMAS


def test_constant_feature_does_not_divide_by_zero():
    stats = StatsColumns(1, capacity=1)
    for _ in range(10):
        stats.update(0, np.array([0.0]))
    z = normalise(np.array([1.0]), *stats.scale(0))
    assert np.isfinite(z).all() and abs(z[0]) <= CLIP_SIGMAS


def test_rows_grow_clear_and_round_trip_through_arrays():
    stats = StatsColumns(2, capacity=1)
    stats.update(0, np.array([1.0, 2.0]))
    stats.update(0, np.array([3.0, 5.0]))
    stats.grow(4)
    stats.update(3, np.array([7.0, 7.0]))
    copy = StatsColumns(2, capacity=4)
    rows = np.array([0, 3])
    copy.put(rows, *stats.to_arrays(rows))
    assert copy.count.tolist() == [2, 0, 0, 1]
    np.testing.assert_array_equal(copy.scale(0)[1], stats.scale(0)[1])
    stats.clear(0)
    assert stats.count[0] == 0 and not stats.mean[0].any()


@pytest.mark.parametrize("size", [1, 3, 12])
def test_folding_many_rows_at_once_equals_folding_them_one_by_one_to_the_bit(size):
    rng = np.random.default_rng(size)
    one_by_one, at_once = StatsColumns(size, 16), StatsColumns(size, 16)
    for _ in range(300):
        rows = rng.permutation(16)[: rng.integers(1, 17)]
        values = rng.standard_normal((len(rows), size)) * 10.0 ** rng.integers(-4, 5)
        expected = []
        for row, value in zip(rows.tolist(), values, strict=True):
            location, spread = one_by_one.fold(row, value)
            expected.append(normalise(value, location, spread))
        assert at_once.fold_normalise_rows(rows, values).tobytes() == np.array(expected).tobytes()
    for name in ("count", "mean", "m2"):
        assert getattr(at_once, name).tobytes() == getattr(one_by_one, name).tobytes()


def test_normalise_one_matches_normalise_also_for_nan_infinities_and_zero_spread():
    cases = [
        (v, loc, s)
        for v in (1.0, -1e9, np.nan, np.inf, 0.0, 1e20)
        for loc in (0.0, 3.0, np.inf)
        for s in (0.0, 2.5, np.nan, np.inf)
    ]
    for value, location, spread in cases:
        with np.errstate(all="ignore"):
            expected = normalise(np.array([value]), np.array([location]), np.array([spread]))
            got = normalise_one(value, location, spread)
        assert np.array([got]).tobytes() == expected.tobytes(), (value, location, spread)


@pytest.mark.parametrize("columns", [[0], [2], [0, 3]])
def test_peek_fold_gives_folds_bits_for_its_columns_and_folds_nothing(columns):
    # Counts 0 and 1 have their own spread rule; magnitudes up to 1e200 overflow m2 to inf.
    rng = np.random.default_rng(len(columns) + columns[-1])
    stats = StatsColumns(4, 3)
    for _ in range(300):
        row = int(rng.integers(0, 3))
        if rng.random() < 0.05:
            stats.clear(row)
        value = rng.standard_normal(4) * 10.0 ** rng.integers(-6, 201, size=4)
        before = [getattr(stats, name).tobytes() for name in ("count", "mean", "m2")]
        peeked = stats.peek_fold(row, columns, value[columns].tolist())
        assert [getattr(stats, name).tobytes() for name in ("count", "mean", "m2")] == before
        with np.errstate(all="ignore"):
            location, spread = stats.fold(row, value)
        assert peeked[0].tobytes() == location[columns].tobytes()
        assert peeked[1].tobytes() == spread[columns].tobytes()
    assert np.isinf(stats.m2).any()
