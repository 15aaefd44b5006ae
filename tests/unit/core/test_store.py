"""The key-state store's rows: handed out, grown and reused without changing any key's values."""

import math

import numpy as np
import pytest

from daemon.core.pending import NO_EVENT, FreeIds, PendingEvents
from daemon.core.store import KeyStateStore


def _store(capacity=4):
    return KeyStateStore(0, layers=1, units=3, n_inputs=2, n_targets=1, capacity=capacity)


def test_free_ids_hand_out_given_back_ids_first_then_fresh_ones_in_order():
    free = FreeIds()
    free.add_range(0, 4)
    assert [free.pop(), free.pop(), free.pop()] == [0, 1, 2]
    free.push(1)
    free.push(0)
    assert len(free) == 3
    assert [free.pop(), free.pop(), free.pop()] == [0, 1, 3]
    assert len(free) == 0
    free.add_range(4, 6)
    assert [free.pop(), free.pop()] == [4, 5]
    with pytest.raises(ValueError, match="do not extend"):
        free.add_range(2, 8)


def test_growth_keeps_every_row_and_new_keys_start_empty():
    store = _store(capacity=2)
    rows = [store.add(f"k{i}") for i in range(2)]
    store.states[rows[1]] = 7.0
    store.last_ts[rows[1]] = 3.5
    store.feature_stats.fold(rows[1], np.array([1.0, 2.0]))
    store.last_level[rows[1]] = 9.0
    grown = [store.add(f"n{i}") for i in range(5)]  # two doublings
    assert store.capacity == 8
    assert float(store.states[rows[1]].max()) == 7.0 and store.last_ts[rows[1]] == 3.5
    assert store.feature_stats.count[rows[1]] == 1 and store.last_level[rows[1], 0] == 9.0
    for row in grown:
        assert math.isnan(store.last_ts[row]) and math.isnan(store.last_level[row, 0])
        assert store.head[row] == store.tail[row] == NO_EVENT
        assert not store.states[row].any() and store.feature_stats.count[row] == 0
    assert [store.keys[r] for r in rows + grown] == ["k0", "k1"] + [f"n{i}" for i in range(5)]


def test_a_dropped_keys_row_comes_back_like_new():
    store = _store()
    row = store.add("a")
    store.states[row] = 1.0
    store.last_ts[row] = 5.0
    store.last_target[row] = 2.0
    store.target_stats.update(row, np.array([4.0]))
    event = store.events.new()
    store.append(row, event)
    assert store.remove(row) == [event]
    again = store.add("b")
    assert again == row and store.keys[row] == "b" and "a" not in store.row_of
    assert not store.states[row].any() and math.isnan(store.last_ts[row])
    assert math.isnan(store.last_target[row, 0]) and store.target_stats.count[row] == 0
    assert store.queue(row) == [] and store.pending[row] == 0


def test_columns_of_one_mode_and_statistics_are_allocated_on_first_use():
    store = _store()
    row = store.add("a")
    assert store.mode_columns() == {}
    assert not store.target_stats.allocated and not store.step_stats.allocated
    location, spread = store.target_stats.scale(row)  # reading does not allocate
    assert location.tolist() == [0.0] and spread.tolist() == [1.0]
    assert not store.target_stats.allocated
    store.step_stats.fold(row, np.array([1.0]))
    assert store.step_stats.allocated and not store.target_stats.allocated
    assert math.isnan(store.last_level[row, 0])
    assert list(store.mode_columns()) == ["last_level"]


def test_event_ids_are_int32_and_the_pool_grows_keeping_events():
    events = PendingEvents(n_inputs=2, n_targets=1, capacity=2)
    ids = [events.new() for _ in range(3)]
    assert events.capacity == 256 and ids == [0, 1, 2]
    assert events.next.dtype == np.int32 and events.next[ids[0]] == NO_EVENT
    events.release(ids[1])
    assert events.new() == ids[1] and events.live == 3


def test_large_columns_live_on_their_own_zero_pages_and_grow_keeping_values():
    from daemon.core import pages

    small = pages.zeros((10, 2), np.float32)
    large = pages.zeros((300_000, 2), np.float64)  # 4.8 MB: its own mapping
    assert large.flags.writeable and not large.any() and isinstance(small, np.ndarray)
    large[7] = 3.0
    bigger = pages.grown(large, 600_000)
    assert bigger.shape == (600_000, 2) and bigger[7].tolist() == [3.0, 3.0]
    assert float(bigger.sum()) == 6.0
