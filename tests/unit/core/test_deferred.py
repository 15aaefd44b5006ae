"""Deferred inputs: normalised in rounds over keys and stores, bit-identical to one at a time."""

import numpy as np

from daemon.core.deferred import DeferredInputs
from daemon.core.store import KeyStateStore


def _store(partition):
    return KeyStateStore(partition, layers=1, units=2, n_inputs=3, n_targets=1)


def test_settle_in_rounds_matches_folding_each_event_in_arrival_order():
    rng = np.random.default_rng(7)
    stores = [_store(0), _store(1)]
    twins = [_store(0), _store(1)]  # folded one event at a time, the reference
    for store, twin in zip(stores, twins, strict=True):
        for key in ("a", "b", "c"):
            store.add(key)
            twin.add(key)
    deferred = DeferredInputs()
    expected = {}
    # Uneven keys: "a" of store 0 sends five events, others one or two, interleaved.
    arrivals = [(0, 0), (0, 0), (1, 2), (0, 1), (0, 0), (1, 2), (0, 0), (1, 0), (0, 0), (0, 1)]
    for s, row in arrivals:
        inputs = rng.normal(100.0, 30.0, 3)
        e = stores[s].events.new()
        deferred.defer(stores[s], row, e, inputs)
        expected[(s, e)] = twins[s].feature_stats.fold_normalise(row, inputs)[0]
    assert all(not store.events.x.any() for store in stores)  # nothing written before settle
    deferred.settle()
    for (s, e), z in expected.items():
        x = stores[s].events.x[e]
        assert x.tobytes() == z.astype(x.dtype).tobytes()  # as ingest stores it
    for store, twin in zip(stores, twins, strict=True):
        assert store.feature_stats.mean.tobytes() == twin.feature_stats.mean.tobytes()
        assert store.feature_stats.m2.tobytes() == twin.feature_stats.m2.tobytes()


def test_settle_twice_writes_nothing_new():
    store = _store(0)
    row = store.add("k")
    deferred = DeferredInputs()
    e = store.events.new()
    deferred.defer(store, row, e, np.array([1.0, 2.0, 3.0]))
    deferred.settle()
    before = store.feature_stats.count.copy()
    deferred.settle()
    assert np.array_equal(store.feature_stats.count, before)


def test_a_key_is_held_from_its_first_deferred_event_until_settle():
    stores = [_store(0), _store(1)]
    for store in stores:
        store.add("a")
        store.add("b")
    deferred = DeferredInputs()
    deferred.defer(stores[0], 1, stores[0].events.new(), np.ones(3))
    assert deferred.holds(stores[0], 1)
    assert not deferred.holds(stores[0], 0)
    assert not deferred.holds(stores[1], 1)  # the same row of another partition's store
    deferred.settle()
    assert not deferred.holds(stores[0], 1)
