"""The learner's state survives export and import exactly: a restored learner continues as if
it had never stopped (the numpy toy model stands in for TensorFlow)."""

import json

import numpy as np
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_learner, import_learner
from daemon.settings import ModelSettings, Settings, StreamSettings


def _settings():
    return Settings(
        model=ModelSettings(n_features=2, batch_size=3, window=3),
        stream=StreamSettings(max_batch_wait_ms=0, max_parked_keys=4, reset_after_idle_s=5),
    )


def _learner():
    settings = _settings()
    return OnlineLearner(settings, ToyModel(3, 2), clock=lambda: 0.0)


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
        learner.ingest(event, 0, offset)
        if offset % 4 == 3:
            learner.end_of_poll()
        published += learner.take_outbox()
    return published


def _round_trip(learner):
    arrays, meta = export_learner(learner)
    meta = json.loads(json.dumps(meta))  # it is written as JSON
    fresh = _learner()
    import_learner(fresh, {k: v.copy() for k, v in arrays.items()}, meta, now=0.0)
    return fresh


def test_restored_learner_continues_exactly_like_the_uninterrupted_one():
    events = _events()
    cut = 41
    straight = _learner()
    _feed(straight, events)
    first = _learner()
    _feed(first, events[:cut])
    assert first.table.parked and any(s.buffer for s in first.table.parked.values())
    resumed = _round_trip(first)
    _feed(resumed, events[cut:], start=cut)
    for learner in (straight, resumed):
        learner.drain()
    assert resumed.step == straight.step
    assert dict(resumed.resets) == dict(straight.resets)
    assert resumed.table.evictions == straight.table.evictions
    for key in [f"k{k}" for k in range(7)]:
        np.testing.assert_array_equal(resumed.key_state(key), straight.key_state(key))
    state_a = resumed.table.bound(key) or resumed.table.parked[key]
    state_b = straight.table.bound(key) or straight.table.parked[key]
    np.testing.assert_array_equal(state_a.feature_stats.mean, state_b.feature_stats.mean)


def test_round_trip_preserves_slots_order_buffers_and_counters():
    learner = _learner()
    _feed(learner, _events()[:30])
    restored = _round_trip(learner)
    assert restored.table.slot_of == learner.table.slot_of
    assert restored.table.recency_order() == learner.table.recency_order()
    assert list(restored.table.parked) == list(learner.table.parked)
    assert restored.table.free_slots() == learner.table.free_slots()
    np.testing.assert_array_equal(restored.table.states, learner.table.states)
    for key, state in learner.table.parked.items():
        other = restored.table.parked[key]
        assert [p.offset for p in other.buffer] == [p.offset for p in state.buffer]
        np.testing.assert_array_equal(other.parked_state, state.parked_state)
    assert restored.step == learner.step and restored.untrained == learner.untrained
    assert restored.prequential == learner.prequential


def test_empty_learner_round_trips():
    restored = _round_trip(_learner())
    assert restored.step == 0 and not restored.table.slot_of
