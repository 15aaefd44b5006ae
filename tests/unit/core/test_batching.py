"""Batches are fixed-shape, left-aligned, masked, and never cross the start of a sequence."""

import numpy as np
import pytest

from daemon.core.batching import build_infer_batch, build_train_batch
from daemon.core.scaling import RunningStats
from daemon.core.slots import KeyState, Pending

F, T = 2, 3


def _pending(value, trainable=True, starts=False, forecast=True, predicted=False):
    p = Pending(
        partition=0,
        offset=int(value),
        ts=float(value),
        x=np.full(F, value, np.float32),
        naive=None,
        location=np.zeros(1),
        spread=np.ones(1),
        forecast_mode=forecast,
        starts_sequence=starts,
        received_at=0.0,
    )
    if trainable:
        p.y = np.array([value * 10], np.float32)
    if predicted:
        p.prediction = np.zeros(1)
    return p


def _state(key, events):
    state = KeyState(key, RunningStats(F), RunningStats(1))
    state.buffer = list(events)
    return state


def test_rows_are_left_aligned_padded_and_masked():
    rows = [
        _state("a", [_pending(1), _pending(2)]),
        None,
        _state("c", [_pending(5, trainable=False)]),
    ]
    batch = build_train_batch(rows, T, F, 1)
    assert batch.x.shape == (3, T, F) and batch.y.shape == (3, T, 1) and batch.mask.shape == (3, T)
    np.testing.assert_array_equal(batch.mask, [[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(batch.x[0, :, 0], [1, 2, 0])
    np.testing.assert_array_equal(batch.y[0, :, 0], [10, 20, 0])
    assert [(slot, len(events)) for slot, events in batch.taken] == [(0, 2)]


def test_row_takes_at_most_window_events_and_stops_at_untrainable():
    rows = [
        _state("a", [_pending(i) for i in range(1, 6)]),
        _state("b", [_pending(1), _pending(2, trainable=False)]),
    ]
    batch = build_train_batch(rows, T, F, 1)
    assert [len(events) for _, events in batch.taken] == [T, 1]


def test_row_stops_before_a_new_sequence_and_resets_when_it_starts_one():
    rows = [
        _state("a", [_pending(1), _pending(2, starts=True), _pending(3)]),
        _state("b", [_pending(4, starts=True), _pending(5)]),
    ]
    batch = build_train_batch(rows, T, F, 1)
    assert [len(events) for _, events in batch.taken] == [1, 2]
    assert batch.reset_rows == [1]


def test_no_trainable_event_means_no_batch():
    assert build_train_batch([_state("a", [_pending(1, trainable=False)]), None], T, F, 1) is None


def test_infer_batch_runs_the_newest_sequence_for_waiting_events():
    rows = [
        _state("a", [_pending(1, predicted=True), _pending(2, trainable=False)]),
        _state("b", [_pending(3, predicted=True), _pending(4, starts=True, trainable=False)]),
        _state("c", [_pending(6, forecast=False)]),
        _state("d", [_pending(7, predicted=True)]),
    ]
    batch = build_infer_batch(rows, T + 1, F, include_supervised=False)
    assert batch.x.shape == (4, T + 1, F)
    assert [(slot, t) for slot, t, _ in batch.wanted] == [(0, 1), (1, 0)]
    assert batch.zero_rows == [1]
    np.testing.assert_array_equal(batch.x[0, :2, 0], [1, 2])  # context, then the waiting event
    np.testing.assert_array_equal(batch.x[1, :1, 0], [4])
    with_supervised = build_infer_batch(rows, T + 1, F, include_supervised=True)
    assert (2, 0) in [(slot, t) for slot, t, _ in with_supervised.wanted]


def test_infer_batch_is_none_when_nothing_waits():
    rows = [_state("a", [_pending(1, predicted=True)])]
    assert build_infer_batch(rows, T + 1, F, include_supervised=True) is None


def test_infer_batch_refuses_a_sequence_longer_than_its_width():
    rows = [_state("a", [_pending(i, trainable=False) for i in range(T + 2)])]
    with pytest.raises(AssertionError):
        build_infer_batch(rows, T + 1, F, include_supervised=False)
