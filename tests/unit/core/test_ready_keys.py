"""Ready keys: wait order, requeue after a step, and the batch-close rule (DESIGN §4)."""

from daemon.core.ready_keys import HOT_KEY_WINDOWS, ReadyKeys
from daemon.core.store import KeyStateStore

WINDOW, BATCH = 3, 2


def _keys_with(counts):
    """Return a store and ReadyKeys where row i gained counts[i] trainable events, in order."""
    store = KeyStateStore(0, layers=1, units=2, n_inputs=1, n_targets=1)
    keys = ReadyKeys(WINDOW, BATCH)
    for i, count in enumerate(counts):
        row = store.add(f"k{i}")
        for n in range(1, count + 1):
            store.trainable[row] = n
            keys.counted((0, row), n)
    return store, keys


def test_keys_join_ready_at_one_event_and_full_at_a_window_in_that_order():
    _, keys = _keys_with([1, 3, 4])
    assert list(keys.ready) == [(0, 0), (0, 1), (0, 2)]
    assert list(keys.full) == [(0, 1), (0, 2)]


def test_requeue_sends_a_key_to_the_back_and_out_of_full_below_a_window():
    _, keys = _keys_with([3, 3])
    keys.requeue((0, 0), before=3, left=1)
    assert list(keys.ready) == [(0, 1), (0, 0)]
    assert list(keys.full) == [(0, 1)]
    keys.requeue((0, 1), before=3, left=0)
    assert list(keys.ready) == [(0, 0)] and not keys.full


def test_batch_closes_when_b_keys_are_full_or_every_ready_key_is_full():
    store, keys = _keys_with([3, 1])
    assert keys.due(store, (0, 1)) is None  # one full, one still filling
    store, keys = _keys_with([3, 3, 1])
    assert keys.due(store, (0, 2)) == [(0, 0), (0, 1)]  # B = 2 full
    store, keys = _keys_with([3])
    assert keys.due(store, (0, 0)) == [(0, 0)]  # every ready key is full


def test_a_hot_key_closes_a_batch_first_without_waiting_for_cold_ones():
    store, keys = _keys_with([1, HOT_KEY_WINDOWS * WINDOW])  # one full key of B = 2
    assert keys.due(store, (0, 1)) == [(0, 1)]
    assert keys.due(store, (0, 0)) is None  # the cold key's event closes nothing


def test_reopen_starts_the_clock_at_the_oldest_ready_keys_head_event():
    store = KeyStateStore(0, layers=1, units=2, n_inputs=1, n_targets=1)
    keys = ReadyKeys(WINDOW, BATCH)
    for i, arrived in enumerate((5.0, 2.0)):
        row = store.add(f"k{i}")
        e = store.events.new()
        store.events.received_at[e] = arrived
        store.append(row, e)
    keys.reopen({0: store})
    assert keys.opened_at is None  # nothing trainable yet
    keys.counted((0, 0), 1)
    keys.counted((0, 1), 1)
    keys.reopen({0: store})
    assert keys.opened_at == 5.0  # the key that became ready first, not the earliest arrival
