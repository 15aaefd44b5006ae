"""Derived features on hand-computed examples: calendar, lags, cadence, fallbacks, no leakage,
rows kept apart, growth and the snapshot round trip."""

import math

import numpy as np
import pytest

from daemon.core.derived import (
    CALENDAR_NAMES,
    DAY_S,
    YEAR_S,
    DerivedFeatures,
    seasons_for_cadence,
)

MONDAY_2024 = 1_704_067_200.0  # 2024-01-01T00:00:00Z, a Monday


def _feed(derived, row, times, values):
    for ts, value in zip(times, values, strict=True):
        derived.observe(row, ts, np.atleast_1d(np.asarray(value, dtype=np.float64)))


def test_calendar_of_the_next_half_hour_by_hand():
    derived = DerivedFeatures(seasons=(), calendar=True, n_targets=1, capacity=1)
    _feed(derived, 0, [MONDAY_2024, MONDAY_2024 + 1800], [5.0, 6.0])
    tod_sin, tod_cos, dow_sin, dow_cos, doy_sin, doy_cos = derived.derive(0)
    # Target time: Monday 01:00 UTC. Time of day 1/24 of a turn; day of week 1/168.
    assert (tod_sin, tod_cos) == pytest.approx((math.sin(math.pi / 12), math.cos(math.pi / 12)))
    assert (dow_sin, dow_cos) == pytest.approx(
        (math.sin(2 * math.pi / 168), math.cos(2 * math.pi / 168))
    )
    # Day of year: mean Gregorian years since 1970; 2024-01-01 01:00 is 53 years and
    # 365.1892 days in, a hair before the turn of the year.
    phase = ((MONDAY_2024 + 3600) / DAY_S - 53 * 365.2425) / 365.2425
    assert phase == pytest.approx(0.99985, abs=1e-5)
    assert (doy_sin, doy_cos) == pytest.approx(
        (math.sin(2 * math.pi * phase), math.cos(2 * math.pi * phase))
    )
    assert derived.names == list(CALENDAR_NAMES)


def test_calendar_keeps_only_what_varies_at_the_cadence():
    daily = DerivedFeatures(seasons=(), calendar=True, n_targets=1, capacity=1)
    _feed(daily, 0, [MONDAY_2024, MONDAY_2024 + DAY_S], [1.0, 2.0])
    # Target Wednesday 00:00: 2/7 of the week; no time of day at a daily cadence.
    expected = [0.0, 0.0, math.sin(4 * math.pi / 7), math.cos(4 * math.pi / 7)]
    np.testing.assert_allclose(daily.derive(0)[:4], expected, atol=1e-12)
    monthly = DerivedFeatures(seasons=(), calendar=True, n_targets=1, capacity=1)
    _feed(monthly, 0, [MONDAY_2024, MONDAY_2024 + 31 * DAY_S], [1.0, 2.0])
    features = monthly.derive(0)
    assert features[:4].tolist() == [0.0, 0.0, 0.0, 0.0]  # no time of day, no day of week
    target = MONDAY_2024 + 62 * DAY_S
    angle = 2 * math.pi * (target % YEAR_S) / YEAR_S
    assert features[4:].tolist() == pytest.approx([math.sin(angle), math.cos(angle)])


def test_calendar_is_zero_until_the_cadence_is_known():
    derived = DerivedFeatures(seasons=(), calendar=True, n_targets=1, capacity=1)
    assert derived.derive(0).tolist() == [0.0] * 6
    _feed(derived, 0, [MONDAY_2024, MONDAY_2024], [1.0, 2.0])  # equal times: no gap yet
    assert derived.cadence(0) == 0.0
    assert derived.derive(0).tolist() == [0.0] * 6


def test_lags_and_steps_are_taken_from_the_history_with_fallbacks():
    derived = DerivedFeatures(seasons=(2, 3), calendar=False, n_targets=2, capacity=1)
    assert derived.names == [
        *("lag_2[0]", "lag_2[1]", "lag_3[0]", "lag_3[1]"),
        *("step_2[0]", "step_2[1]", "step_3[0]", "step_3[1]", "step_last[0]", "step_last[1]"),
    ]
    assert derived.derive(0).tolist() == [0.0] * 10  # nothing observed
    _feed(derived, 0, [0.0], [[1.0, -1.0]])
    # Too short: each lag is the last value; no step is known yet.
    assert derived.derive(0).tolist() == [1.0, -1.0, 1.0, -1.0] + [0.0] * 6
    _feed(derived, 0, [1.0], [[2.0, -2.0]])
    # History 1 2: lag 2 is 1, lag 3 falls back to 2; only the last step (2 - 1) is known.
    assert derived.derive(0).tolist() == [1.0, -1.0, 2.0, -2.0, 0, 0, 0, 0, 1.0, -1.0]
    _feed(derived, 0, [2.0, 3.0], [[4.0, -4.0], [8.0, -8.0]])
    # History 1 2 4 8, predicting the 5th: lag 2 is 4, lag 3 is 2; step 2 = 4 - 2,
    # step 3 = 2 - 1, the last step = 8 - 4.
    assert derived.derive(0).tolist() == [
        *(4.0, -4.0, 2.0, -2.0),
        *(2.0, -2.0, 1.0, -1.0, 4.0, -4.0),
    ]


def test_the_ring_wraps_at_the_longest_lag():
    derived = DerivedFeatures(seasons=(1, 4), calendar=False, n_targets=1, capacity=1)
    squares = [float(i * i) for i in range(11)]  # 0 1 4 ... 100; the ring holds 4 + 1
    _feed(derived, 0, range(11), squares)
    # Lags 100 and 49; steps 100 - 81 and 49 - 36; the last step 100 - 81.
    assert derived.derive(0).tolist() == [100.0, 49.0, 19.0, 13.0, 19.0]


def test_auto_seasons_follow_the_cadence():
    hourly = DerivedFeatures(seasons=None, calendar=False, n_targets=1, capacity=1)
    assert hourly.names == [
        *("lag_auto1[0]", "lag_auto2[0]", "lag_auto3[0]"),
        *("step_auto1[0]", "step_auto2[0]", "step_auto3[0]", "step_last[0]"),
    ]
    assert hourly.longest == 366  # the longest season, 365, and the value before it
    _feed(hourly, 0, [3600.0 * i for i in range(30)], [float(i) for i in range(30)])
    # Hourly: seasons 24 and 168. Lag 24 of the 31st value is value 6; 168 falls back to 29.
    # The unused third slot: the last value. Step 24 is 6 - 5; step 168 is not known yet; the
    # unused slot's step and the last step are 29 - 28.
    assert hourly.derive(0).tolist() == [6.0, 29.0, 29.0, 1.0, 0.0, 1.0, 1.0]
    monthly = DerivedFeatures(seasons=None, calendar=False, n_targets=1, capacity=1)
    _feed(monthly, 0, [31 * DAY_S * i for i in range(14)], [float(i) for i in range(14)])
    # Lag 12 and its step 2 - 1; the unused slots: the last value and the last step.
    assert monthly.derive(0).tolist() == [2.0, 13.0, 13.0, 1.0, 1.0, 1.0, 1.0]
    assert seasons_for_cadence(1800.0) == (48, 336)
    assert seasons_for_cadence(DAY_S) == (7, 364, 365)  # weekday-aligned and dated years
    assert seasons_for_cadence(30 * DAY_S) == (12,)
    assert seasons_for_cadence(300.0) == ()  # 5 minutes: no entry, both slots are naive


def test_cadence_is_the_median_of_the_last_15_gaps():
    derived = DerivedFeatures(seasons=(), calendar=False, n_targets=1, capacity=1)
    times = np.cumsum([0, 60, 60, 120, 60])
    _feed(derived, 0, times, [0.0] * 5)
    assert derived.cadence(0) == 60.0  # gaps 60 60 120 60: median of 4 is (60 + 60) / 2
    _feed(derived, 0, times[-1] + np.cumsum([120, 120]), [0.0, 0.0])
    assert derived.cadence(0) == 90.0  # 60 60 60 120 120 120: (60 + 120) / 2
    # Twenty gaps of 10 s more: the 15-gap ring forgets every older gap.
    _feed(derived, 0, times[-1] + 240 + np.cumsum([10] * 20), [0.0] * 20)
    assert derived.cadence(0) == 10.0


def test_derive_for_event_t_does_not_depend_on_what_follows():
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.choice([1800.0, 1800.0, 3600.0], size=400))
    values = rng.normal(size=(400, 1))
    seen = []
    first = DerivedFeatures(seasons=None, calendar=True, n_targets=1, capacity=1)
    for t in range(400):
        first.observe(0, times[t], values[t])
        seen.append(first.derive(0).copy())
    other = DerivedFeatures(seasons=None, calendar=True, n_targets=1, capacity=1)
    altered = values.copy()
    altered[200:] += 100.0  # a different future after event 199
    for t in range(400):
        other.observe(0, times[t] + (5000.0 if t >= 200 else 0.0), altered[t])
        if t < 200:
            np.testing.assert_array_equal(other.derive(0), seen[t])


def test_rows_are_independent_and_growth_keeps_them():
    derived = DerivedFeatures(seasons=(2,), calendar=True, n_targets=1, capacity=2)
    _feed(derived, 0, [0.0, 60.0, 120.0], [1.0, 2.0, 3.0])
    _feed(derived, 1, [0.0, DAY_S], [7.0, 8.0])
    before = [derived.derive(0).copy(), derived.derive(1).copy()]
    derived.grow(4)
    assert derived.capacity == 4
    np.testing.assert_array_equal(derived.derive(0), before[0])
    np.testing.assert_array_equal(derived.derive(1), before[1])
    assert derived.derive(3).tolist() == [0.0] * 9
    derived.observe(3, 0.0, np.array([9.0]))
    assert derived.derive(3)[6] == 9.0  # lag 2 falls back to the one value
    derived.clear_row(0)
    assert derived.derive(0).tolist() == [0.0] * 9
    np.testing.assert_array_equal(derived.derive(1), before[1])


def test_snapshot_round_trip_is_exact_and_rows_move():
    derived = DerivedFeatures(seasons=None, calendar=True, n_targets=2, capacity=3)
    rng = np.random.default_rng(1)
    for row in range(3):
        _feed(derived, row, np.cumsum(np.full(50, 3600.0 * (row + 1))), rng.normal(size=(50, 2)))
    restored = DerivedFeatures.from_arrays(derived.to_arrays())
    assert restored.names == derived.names and restored.capacity == 3
    for row in range(3):
        np.testing.assert_array_equal(restored.derive(row), derived.derive(row))
        restored.observe(row, 1e7, np.array([1.0, 2.0]))
        derived.observe(row, 1e7, np.array([1.0, 2.0]))
        np.testing.assert_array_equal(restored.derive(row), derived.derive(row))
    moved = DerivedFeatures(seasons=None, calendar=True, n_targets=2, capacity=2)
    moved.put(np.array([1, 0]), derived.take(np.array([0, 2])))
    np.testing.assert_array_equal(moved.derive(1), derived.derive(0))
    np.testing.assert_array_equal(moved.derive(0), derived.derive(2))
    other = DerivedFeatures(seasons=(7,), calendar=True, n_targets=2, capacity=2)
    with pytest.raises(ValueError, match="other derived-feature settings"):
        other.put(np.array([0]), derived.take(np.array([0])))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="seasons"):
        DerivedFeatures(seasons=(0,), calendar=True, n_targets=1, capacity=1)
    derived = DerivedFeatures(seasons=(2,), calendar=False, n_targets=1, capacity=2)
    with pytest.raises(ValueError, match="only grow"):
        derived.grow(1)


@pytest.mark.parametrize("seasons", [None, (3,), (2, 5)])
def test_one_target_fast_path_equals_the_general_path_to_the_bit(seasons):
    # One target runs in Python floats; two run through numpy's float32 ring. Target 0 of a
    # two-target key must get exactly the one-target key's features, steps rounded to float32.
    rng = np.random.default_rng(7)
    one = DerivedFeatures(seasons, True, 1, 2)
    two = DerivedFeatures(seasons, True, 2, 2)
    ts = 1.6e9
    for _ in range(40):
        ts += float(rng.choice([3_600.0, 86_400.0, 0.0]))
        value = float(rng.standard_normal() * 10.0 ** rng.integers(-3, 30))
        one.observe(0, ts, np.array([value]))
        two.observe(0, ts, np.array([value, -value]))
        expected, got = two.derive(0), one.derive(0)
        assert got[:6].tobytes() == expected[:6].tobytes()
        assert got[6:].tobytes() == expected[6::2].tobytes()
