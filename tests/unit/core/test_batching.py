"""Batches are fixed-shape, left-aligned, masked, gather the keys' states, and never cross the
start of a sequence."""

import numpy as np
import pytest

from daemon.core.batching import build_infer_batch, build_train_batch, split_chunks, train_segment
from daemon.core.pending import HAS_Y, STARTS_SEQUENCE
from daemon.core.store import KeyStateStore

F, T, LAYERS, UNITS = 2, 3, 1, 4


def _store():
    return KeyStateStore(0, LAYERS, UNITS, F, 1)


def _key(store, key, values, trainable=None, starts=(), state=0.0):
    """Add a key whose queue holds one event per value; the first `trainable` know their y."""
    row = store.add(key)
    store.states[row] = state
    trainable = len(values) if trainable is None else trainable
    for i, value in enumerate(values):
        e = store.events.new()
        store.events.x[e] = value
        store.events.y[e] = value * 10
        store.events.offset[e] = int(value)
        store.events.flags[e] = (HAS_Y if i < trainable else 0) | (
            STARTS_SEQUENCE if i in starts else 0
        )
        store.append(row, e)
    store.trainable[row] = trainable
    return row


def _batch(store, rows, batch_size=3):
    segments = [(store, row, train_segment(store, row, T)) for row in rows]
    return build_train_batch(segments, batch_size, T, F, 1)


def test_rows_are_left_aligned_padded_masked_and_start_from_the_keys_states():
    store = _store()
    a = _key(store, "a", [1, 2], state=0.5)
    b = _key(store, "b", [3, 4, 5], state=-1.0)
    batch = _batch(store, [a, b])
    assert batch.x.shape == (3, T, F) and batch.y.shape == (3, T, 1)
    assert batch.mask.tolist() == [[True, True, False], [True, True, True], [False] * 3]
    assert batch.x[0, :, 0].tolist() == [1, 2, 0]
    assert batch.y[1, :, 0].tolist() == [30, 40, 50]
    assert batch.states.shape == (LAYERS, 2, 3, UNITS)
    assert (batch.states[:, :, 0] == 0.5).all() and (batch.states[:, :, 1] == -1.0).all()
    assert not batch.states[:, :, 2].any()


def test_segment_takes_at_most_window_events_and_stops_at_untrainable():
    store = _store()
    long = _key(store, "long", [1, 2, 3, 4, 5])
    waiting = _key(store, "waiting", [1, 2, 3], trainable=1)
    assert len(train_segment(store, long, T)) == T
    assert len(train_segment(store, waiting, T)) == 1


def test_segment_stops_before_a_new_sequence_and_a_row_that_starts_one_has_zero_state():
    store = _store()
    row = _key(store, "a", [1, 2, 3], starts=(1,), state=0.7)
    assert len(train_segment(store, row, T)) == 1
    store.take(row, 1)
    batch = _batch(store, [row])
    assert batch.mask[0].tolist() == [True, True, False]
    assert not batch.states.any()  # the row begins a new sequence


def test_chunks_are_at_most_the_width_and_split_at_a_sequence_start():
    store = _store()
    row = _key(store, "a", [1, 2, 3, 4, 5, 6], starts=(4,))
    chunks = split_chunks(store, store.queue(row), 3)
    offsets = [[int(store.events.offset[e]) for e in chunk] for chunk in chunks]
    assert offsets == [[1, 2, 3], [4], [5, 6]]
    first = store.queue(row)[:1]
    assert split_chunks(store, first, 3) == [first]
    assert split_chunks(store, [], 3) == []


def test_infer_batch_runs_each_chunk_from_its_given_state_or_zero_at_a_sequence_start():
    store = _store()
    a = _key(store, "a", [1, 2])
    b = _key(store, "b", [7], starts=(0,))
    start = np.full((LAYERS, 2, UNITS), 0.25, np.float32)
    batch = build_infer_batch(
        [(store, a, store.queue(a), start), (store, b, store.queue(b), start)], 4, 3, F, 1
    )
    assert batch.x.shape == (4, 3, F)
    assert batch.mask.tolist()[:2] == [[True, True, False], [True, False, False]]
    assert (batch.states[:, :, 0] == 0.25).all() and not batch.states[:, :, 1].any()


def test_batches_refuse_more_rows_than_they_have():
    store = _store()
    rows = [_key(store, k, [1]) for k in "abcd"]
    with pytest.raises(ValueError, match="1 to 3"):
        _batch(store, rows, batch_size=3)


def test_rows_from_two_stores_interleaved_each_get_their_own_events_and_state():
    # A batch lays its rows store by store; row b must still hold members[b], whatever the order.
    stores = [_store(), KeyStateStore(1, LAYERS, UNITS, F, 1)]
    members = []
    for b, (store, values, starts) in enumerate(
        [
            (stores[0], [1, 2], ()),
            (stores[1], [3], ()),
            (stores[0], [4, 5, 6], (0,)),
            (stores[1], [8, 9], ()),
        ]
    ):
        row = _key(store, f"k{b}", values, starts=starts, state=0.1 * (b + 1))
        members.append((store, row, train_segment(store, row, T)))
    batch = build_train_batch(members, 5, T, F, 1)
    starts = [np.full((LAYERS, 2, UNITS), -0.1 * (b + 1), np.float32) for b in range(4)]
    chunks = [(s, row, segment, starts[b]) for b, (s, row, segment) in enumerate(members)]
    infer = build_infer_batch(chunks, 5, T, F, 1)
    for b, (store, row, segment) in enumerate(members):
        n = len(segment)
        assert (
            batch.x[b, :n, 0].tolist()
            == infer.x[b, :n, 0].tolist()
            == store.events.x[segment, 0].tolist()
        )
        assert batch.y[b, :n, 0].tolist() == store.events.y[segment, 0].tolist()
        assert batch.mask[b].tolist() == infer.mask[b].tolist() == [True] * n + [False] * (T - n)
        fresh = bool(store.events.flags[segment[0]] & STARTS_SEQUENCE)
        np.testing.assert_array_equal(batch.states[:, :, b], 0.0 if fresh else store.states[row])
        np.testing.assert_array_equal(infer.states[:, :, b], 0.0 if fresh else starts[b])
    assert not batch.mask[4].any() and not batch.states[:, :, 4].any()
    assert (
        [m[:2] for m in batch.members] == [m[:2] for m in infer.members] == [m[:2] for m in members]
    )
