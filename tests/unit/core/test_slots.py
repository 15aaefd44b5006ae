"""Slot table: binding, LRU eviction, parking and restore, the parked cap, and resets."""

import numpy as np
import pytest

from daemon.core.slots import ResetReason, SlotTable, reset_reason

SHAPE = (2, 2, 3, 4)  # layers, (h, c), B=3 slots, units


def _table(max_parked=10):
    return SlotTable(SHAPE, n_features=2, n_targets=1, max_parked_keys=max_parked)


def _mark(table, slot, value):
    table.states[:, :, slot, :] = value


def test_keys_bind_to_free_slots_then_evict_least_recently_active():
    table = _table()
    for key in "abc":
        table.bind(key)
    table.touch("a")  # b is now least recently active
    slot = table.victim()
    assert table.rows[slot].key == "b"


def test_evicted_key_gets_its_exact_rows_back_in_another_slot():
    table = _table()
    slots = {key: table.bind(key)[0] for key in "abc"}
    _mark(table, slots["a"], 1.5)
    table.evict(slots["a"])
    assert "a" in table.parked and table.evictions == 1
    new_slot, _ = table.bind("d")  # d takes a's old slot and starts from zero
    assert new_slot == slots["a"]
    assert not table.states[:, :, new_slot, :].any()
    table.evict(slots["b"])
    restored_slot, state = table.bind("a")
    assert state.key == "a" and state.parked_state is None
    np.testing.assert_array_equal(table.states[:, :, restored_slot, :], 1.5)


def test_parked_store_drops_least_recently_used_past_its_cap():
    table = _table(max_parked=1)
    slots = {key: table.bind(key)[0] for key in "abc"}
    assert table.evict(slots["a"]) is None
    dropped = table.evict(slots["b"])
    assert dropped is not None and dropped.key == "a"
    assert list(table.parked) == ["b"] and table.parked_dropped == 1


def test_zero_parked_cap_drops_on_eviction():
    table = _table(max_parked=0)
    slot, _ = table.bind("a")
    assert table.evict(slot).key == "a"
    assert not table.parked


def test_global_reset_zeroes_bound_rows_and_parked_states_on_restore():
    table = _table()
    slots = {key: table.bind(key)[0] for key in "abc"}
    for slot in slots.values():
        _mark(table, slot, 2.0)
    table.evict(slots["c"])
    assert table.reset_all() == 3
    assert not table.states.any()
    assert not table.key_state_rows("c").any()
    slot, _ = table.bind("c")
    assert not table.states[:, :, slot, :].any()


def test_reset_row_zeroes_only_that_row():
    table = _table()
    for key in "abc":
        table.bind(key)
    table.states[...] = 3.0
    table.reset_row(1)
    assert not table.states[:, :, 1, :].any()
    assert (table.states[:, :, [0, 2], :] == 3.0).all()


@pytest.mark.parametrize(
    ("last_ts", "ts", "flag", "idle", "expected"),
    [
        (None, 5.0, True, 0.0, None),  # a key's first event starts its sequence anyway
        (1.0, 2.0, True, 0.0, ResetReason.EVENT_FLAG),
        (1.0, 100.0, False, 50.0, ResetReason.IDLE_GAP),
        (1.0, 40.0, False, 50.0, None),
        (1.0, 1e9, False, 0.0, None),  # 0 disables the idle reset
    ],
)
def test_reset_reason_per_key_policy(last_ts, ts, flag, idle, expected):
    table = _table()
    _, state = table.bind("k")
    state.last_ts = last_ts
    assert reset_reason(state, ts, flag, idle) == expected
