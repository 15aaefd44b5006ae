"""The learner's state survives export and import exactly: a restored learner continues as if
it had never stopped (the numpy toy model stands in for TensorFlow)."""

import json

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import (
    export_learner,
    export_partition,
    import_learner,
    import_partition,
)
from daemon.settings import ModelSettings, Settings, StreamSettings


def _settings():
    return Settings(
        model=ModelSettings(n_features=2, batch_size=3, window=3),
        stream=StreamSettings(max_batch_wait_ms=0, max_keys=5, reset_after_idle_s=5),
    )


def _learner():
    settings = _settings()
    return OnlineLearner(settings, ToyModel.for_settings(settings), clock=lambda: 0.0)


def _events():
    rng = np.random.default_rng(7)
    out = []
    for day in range(14):
        for k in range(7):
            target = None if k % 2 else np.array([rng.normal()])
            gap = 10 if (day == 9 and k == 3) else 0
            out.append(
                Event(
                    f"k{k}",
                    float(day + gap * (day >= 9)),
                    rng.normal(size=2) * (k + 1),
                    target,
                    reset=(day == 6 and k == 1),
                )
            )
    return out


def _feed(learner, events, start=0):
    published = []
    for offset, event in enumerate(events, start=start):
        learner.ingest(event, offset % 2, offset)  # two input partitions
        if offset % 4 == 3:
            learner.end_of_poll()
        published += learner.take_outbox()
    return published


def _round_trip(learner):
    parts, meta = export_learner(learner)
    meta = json.loads(json.dumps(meta))  # it is written as JSON
    parts = {
        p: ({k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(part_meta)))
        for p, (arrays, part_meta) in parts.items()
    }
    fresh = _learner()
    import_learner(fresh, parts, meta, now=0.0)
    return fresh


def _queues(learner):
    """Every key's pending events as (partition, key) -> [(offset, flags, x, y)]."""
    out = {}
    for partition, store in learner.stores.items():
        events = store.events
        for key, row in store.row_of.items():
            out[(partition, key)] = [
                (
                    int(events.offset[e]),
                    int(events.flags[e]),
                    events.x[e].tolist(),
                    events.y[e].tolist(),
                )
                for e in store.queue(row)
            ]
    return out


def test_restored_learner_continues_exactly_like_the_uninterrupted_one():
    events = _events()
    cut = 41
    straight = _learner()
    straight_out = _feed(straight, events)
    first = _learner()
    first_out = _feed(first, events[:cut])
    assert first.resets["dropped"] > 0 and first.pending_events() > 0
    resumed = _round_trip(first)
    resumed_out = _feed(resumed, events[cut:], start=cut)
    for learner in (straight, resumed):
        learner.drain()
    assert resumed.step == straight.step
    assert dict(resumed.resets) == dict(straight.resets)
    assert resumed.trained_events == straight.trained_events
    for key in [f"k{k}" for k in range(7)]:
        state = straight.key_state(key)
        if state is None:
            assert resumed.key_state(key) is None
        else:
            np.testing.assert_array_equal(resumed.key_state(key), state)
    for partition, store in straight.stores.items():
        other = resumed.stores[partition]
        rows = [store.row_of[k] for k in store.row_of]
        other_rows = [other.row_of[k] for k in store.row_of]
        np.testing.assert_array_equal(
            other.feature_stats.mean[other_rows], store.feature_stats.mean[rows]
        )
    before = {p.offset: p.prediction for p in straight_out}
    after = {p.offset: p.prediction for p in first_out + resumed_out}
    assert sorted(after) == sorted(before)
    for offset, prediction in before.items():
        np.testing.assert_array_equal(after[offset], prediction)


def test_round_trip_preserves_keys_queues_wait_order_and_counters():
    learner = _learner()
    _feed(learner, _events()[:30])
    restored = _round_trip(learner)
    for partition, store in learner.stores.items():
        other = restored.stores[partition]
        assert list(other.row_of) == list(store.row_of)
        rows = list(store.row_of.values())
        other_rows = list(other.row_of.values())
        np.testing.assert_array_equal(other.states[other_rows], store.states[rows])
        np.testing.assert_array_equal(other.ahead[other_rows], store.ahead[rows])
        np.testing.assert_array_equal(other.last_active[other_rows], store.last_active[rows])
    assert _queues(restored) == _queues(learner)
    names = {p: list(s.row_of) for p, s in learner.stores.items()}
    restored_names = {p: list(s.row_of) for p, s in restored.stores.items()}
    by_name = [(p, names[p].index(learner.stores[p].keys[r])) for p, r in learner.ready_keys()]
    again = [
        (p, restored_names[p].index(restored.stores[p].keys[r])) for p, r in restored.ready_keys()
    ]
    assert again == by_name and by_name
    assert restored.step == learner.step and restored.untrained == learner.untrained
    assert restored.prequential == learner.prequential
    assert restored.stamp == learner.stamp


def test_empty_learner_round_trips():
    restored = _round_trip(_learner())
    assert restored.step == 0 and restored.keys_in_store() == 0


def test_one_partition_moves_to_another_learner_and_continues_there_exactly():
    # The toy model does not learn, so a key's state depends on its own events only: the
    # partition's keys must end as in the uninterrupted run, whoever trained the rest.
    events = _events()
    cut = 41
    straight = _learner()
    _feed(straight, events)
    straight.drain()
    first = _learner()
    _feed(first, events[:cut])
    arrays, meta = export_partition(first, 1)
    first.drop_partition(1)
    assert 1 not in first.stores and all(ref[0] != 1 for ref in first.ready_keys())
    second = _learner()
    assert import_partition(second, arrays, json.loads(json.dumps(meta)), now=0.0) == 1
    with pytest.raises(ValueError, match="already held"):
        import_partition(second, arrays, meta, now=0.0)
    for offset in range(cut, len(events)):
        if offset % 2 == 1:
            second.ingest(events[offset], 1, offset)
    second.drain()
    moved, reference = second.stores[1], straight.stores[1]
    assert list(moved.row_of) == list(reference.row_of)
    for key, row in reference.row_of.items():
        np.testing.assert_array_equal(moved.states[moved.row_of[key]], reference.states[row])
        np.testing.assert_array_equal(
            moved.feature_stats.mean[moved.row_of[key]], reference.feature_stats.mean[row]
        )


def _one_mode_events(supervised: bool):
    rng = np.random.default_rng(11)
    return [
        Event(
            f"k{k}",
            float(day),
            rng.normal(size=2) * (k + 1),
            np.array([rng.normal()]) if supervised else None,
        )
        for day in range(10)
        for k in range(4)
    ]


@pytest.mark.parametrize("supervised", [False, True], ids=["forecast", "supervised"])
def test_one_mode_stream_never_allocates_the_other_modes_columns_and_restores_exactly(
    supervised,
):
    # A store allocates the columns only one mode reads on first use; a snapshot saves the
    # unused ones as NaN and a restore must leave them unallocated and continue exactly.
    events = _one_mode_events(supervised)
    cut = 17
    straight = _learner()
    straight_out = _feed(straight, events)
    first = _learner()
    first_out = _feed(first, events[:cut])
    resumed = _round_trip(first)
    resumed_out = _feed(resumed, events[cut:], start=cut)
    for learner in (straight, resumed):
        learner.drain()
        for store in learner.stores.values():
            unused = "last_level" if supervised else "last_target"
            assert unused not in store.mode_columns()
            assert not (store.step_stats if supervised else store.target_stats).allocated
    before = {p.offset: p.prediction for p in straight_out}
    after = {p.offset: p.prediction for p in first_out + resumed_out}
    assert sorted(after) == sorted(before)
    for offset, prediction in before.items():
        np.testing.assert_array_equal(after[offset], prediction)
    for partition, store in straight.stores.items():
        other = resumed.stores[partition]
        for key, row in store.row_of.items():
            np.testing.assert_array_equal(other.states[other.row_of[key]], store.states[row])
