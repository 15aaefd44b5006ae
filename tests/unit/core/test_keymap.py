"""The store's key -> row map behaves like an insertion-ordered dict through inserts, removals
and rebuilds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.keymap import KeyMap


def _check(keys: KeyMap, reference: dict[str, int]) -> None:
    assert len(keys) == len(reference)
    assert list(keys) == list(reference)
    assert list(keys.items()) == list(reference.items())
    assert keys.rows().tolist() == list(reference.values())
    for key, row in reference.items():
        assert keys.get(key) == row and keys[key] == row and key in keys
        assert keys.keys[row] == key


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=400))
def test_matches_an_insertion_ordered_dict(operations):
    keys = KeyMap()
    reference: dict[str, int] = {}
    free: list[int] = []
    for insert, number in operations:
        key = f"key-{number}"
        if insert and key not in reference:
            row = free.pop() if free else len(keys.keys)
            keys.insert(key, row)
            reference[key] = row
        elif not insert and key in reference:
            row = keys.remove(key)
            assert row == reference.pop(key) and keys.keys[row] is None
            free.append(row)
        assert keys.get(key) == reference.get(key)
    _check(keys, reference)


def test_many_keys_grow_the_table_and_churn_does_not():
    keys = KeyMap()
    for row in range(5000):
        keys.insert(f"k{row}", row)
    grown = len(keys._slots)
    assert 5000 * 1.5 <= grown <= 5000 * 4 and keys.get("k4999") == 4999  # 1/4 to 2/3 full
    sizes = set()
    for turn in range(20000):  # drop the oldest, add a new one: at most half full, then flat
        row = keys.remove(f"k{turn}")
        keys.insert(f"k{5000 + turn}", row)
        if turn >= 5000:
            sizes.add(len(keys._slots))
    assert sizes == {max(grown, 16384)} and len(keys) == 5000
    assert keys.get("k0") is None and keys.get("k24999") is not None
    assert list(keys)[:2] == ["k20000", "k20001"]


def test_misuse_is_refused():
    keys = KeyMap()
    keys.insert("a", 0)
    with pytest.raises(ValueError, match="already holds"):
        keys.insert("b", 0)
    with pytest.raises(KeyError):
        keys.remove("b")
    with pytest.raises(KeyError):
        keys["b"]
    assert "b" not in keys and 3 not in keys
    assert np.array_equal(keys.rows(), [0])


def test_extend_maps_keys_to_the_next_rows_in_order():
    keys = KeyMap()
    keys.insert("a", 0)
    keys.extend([f"k{i}" for i in range(100)])
    assert keys["a"] == 0 and keys["k99"] == 100 and list(keys)[:2] == ["a", "k0"]
    keys.insert("b", 101)
    assert list(keys)[-1] == "b" and len(keys) == 102
    with pytest.raises(ValueError, match="distinct"):
        keys.extend(["x", "x"])
    with pytest.raises(ValueError, match="distinct"):
        keys.extend(["a"])
    keys.remove("a")
    with pytest.raises(ValueError, match="free rows"):
        keys.extend(["y"])
