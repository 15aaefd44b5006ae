"""The learner with the real compiled model: one trace, no leakage, keys sharing the B rows
without losing state, and per-key normalisation that makes keys 100× apart look alike to the
model."""

import numpy as np
import pytest

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.model.lstm import build_model
from daemon.settings import ModelSettings, Settings, StreamSettings


def _settings(batch_size=4, window=3, learning_rate=0.05, horizon=1, **stream):
    stream.setdefault("max_batch_wait_ms", 0)
    return Settings(
        model=ModelSettings(
            n_features=2,
            n_targets=1,
            target_index=(0,),
            units=8,
            batch_size=batch_size,
            infer_batch_size=batch_size,
            window=window,
            learning_rate=learning_rate,
            horizon=horizon,
        ),
        stream=StreamSettings(**stream),
    )


def _learner(settings):
    model = build_model(settings)
    return OnlineLearner(settings, model, clock=lambda: 0.0), model


def _event(key, day, value, reset=False, target=None):
    target = None if target is None else np.array([target], float)
    return Event(key, float(day), np.array([value, day % 7], float), target, reset)


def _series(keys, days, seed=0):
    rng = np.random.default_rng(seed)
    return [
        _event(key, day, 5.0 + np.sin(day + i) + rng.normal(0, 0.2))
        for day in range(days)
        for i, key in enumerate(keys)
    ]


def _feed(learner, events, poll=5):
    """Ingest like the runner does: end_of_poll after every `poll` events, drain at the end."""
    out = {}
    for offset, event in enumerate(events):
        assert learner.ingest(event, 0, offset) is None
        if offset % poll == poll - 1:
            learner.end_of_poll()
        out.update({p.offset: p for p in learner.take_outbox()})
    learner.drain()
    out.update({p.offset: p for p in learner.take_outbox()})
    return out


def test_steps_trace_once_across_fills_resets_and_key_changes():
    learner, model = _learner(_settings(batch_size=2, reset_after_idle_s=3, reset_every_steps=4))
    events = _series(["a", "b", "c"], days=6)
    events += [_event("a", 6, 1.0, reset=True), _event("b", 20, 1.0), _event("d", 21, 2.0)]
    events += [_event("e", 22 + d, d, target=d) for d in range(4)]  # supervised rows too
    _feed(learner, events, poll=3)
    assert learner.step >= 5 and learner.infer_calls > 5
    assert {"event_flag", "idle_gap", "periodic"} <= set(learner.resets)
    assert model.train_traces == 1
    assert model.infer_traces == 1


@pytest.mark.parametrize("poll", [1, 4, 50])
def test_changing_event_t_plus_1_does_not_change_the_forecast_for_t(poll):
    keys = ["a", "b", "c", "d", "e"]
    events = _series(keys, days=8)
    t = next(i for i, e in enumerate(events) if e.key == "a" and e.ts == 4.0)
    t_next = next(i for i, e in enumerate(events) if e.key == "a" and e.ts == 5.0)
    changed = list(events)
    changed[t_next] = _event("a", 5, 500.0)
    base = _feed(_learner(_settings(batch_size=3))[0], events, poll)
    other = _feed(_learner(_settings(batch_size=3))[0], changed, poll)
    for offset in range(t_next):  # every forecast published before t+1 arrived, t included
        np.testing.assert_array_equal(base[offset].prediction, other[offset].prediction)
        np.testing.assert_array_equal(base[offset].intervals, other[offset].intervals)
    assert not np.array_equal(base[t_next].prediction, other[t_next].prediction)
    assert t < t_next
    # The changed value reaches key a's interval trackers once a step scores it.
    assert any(
        not np.array_equal(base[o].intervals, other[o].intervals)
        for o in range(t_next + 1, len(events))
        if events[o].key == "a"
    )


@pytest.mark.parametrize("poll", [1, 4])
def test_with_a_horizon_no_forecast_depends_on_a_later_event(poll, horizon=3):
    # Derived features stay on (the defaults: calendar and auto lags), and keys train on
    # targets up to H events ahead: still, changing any one event of key "a" changes no
    # forecast published before it arrived, and no other key's forecast before it either.
    settings = _settings(batch_size=3, horizon=horizon)
    assert settings.stream.derived_calendar and settings.stream.seasons == "auto"
    keys = ["a", "b", "c", "d", "e"]
    events = _series(keys, days=14)
    base = _feed(_learner(settings)[0], events, poll)
    assert base[0].prediction.shape == (1, horizon)
    for day in (4, 6, 9):
        t = next(i for i, e in enumerate(events) if e.key == "a" and e.ts == day)
        changed = list(events)
        changed[t] = _event("a", day, 500.0)
        other = _feed(_learner(settings)[0], changed, poll)
        for offset in range(t):
            np.testing.assert_array_equal(base[offset].prediction, other[offset].prediction)
            np.testing.assert_array_equal(base[offset].intervals, other[offset].intervals)
        assert not np.array_equal(base[t].prediction, other[t].prediction)


def test_a_key_ends_with_the_same_state_whichever_keys_share_its_steps():
    keys = [f"k{i}" for i in range(6)]
    events = _series(keys, days=7)
    # A vanishing learning rate keeps the weights equal however the batches are cut, so any
    # difference in a key's state could only come from how rows are gathered and scattered.
    wide, _ = _learner(_settings(batch_size=8, learning_rate=1e-12))
    narrow, _ = _learner(_settings(batch_size=2, learning_rate=1e-12))
    _feed(wide, events)
    _feed(narrow, events)
    assert narrow.step > 2 * wide.step
    for key in keys:
        np.testing.assert_allclose(narrow.key_state(key), wide.key_state(key), atol=1e-6)


def test_keys_100x_apart_get_predictions_100x_apart():
    small = _series(["small"], days=12, seed=3)
    events = []
    for e in small:
        events.append(e)
        events.append(Event("large", e.ts, e.features * [100.0, 1.0], None, False))
    # Frozen weights: a forecast for one key may be made a step later than the other's.
    predictions = _feed(_learner(_settings(batch_size=2, learning_rate=1e-12))[0], events)
    for offset in range(0, len(events), 2):
        np.testing.assert_allclose(
            predictions[offset + 1].prediction, 100.0 * predictions[offset].prediction, rtol=1e-4
        )


def test_supervised_prediction_is_the_forward_pass_before_the_update():
    # Without derived features the model's inputs are the event's features, built by hand here.
    settings = _settings(
        batch_size=1,
        window=2,
        learning_rate=0.5,
        seasons=(),
        derived_calendar=False,
        derived_smoothing=False,
    )
    learner, model = _learner(settings)
    before = model.get_weights()
    calls = []
    train_steps = model.train_steps

    def spy(*inputs):
        calls.append(tuple(np.copy(a) for a in inputs))
        return train_steps(*inputs)

    model.train_steps = spy
    learner.ingest(_event("a", 0, 1.0, target=2.0), 0, 0)
    learner.ingest(_event("a", 1, 2.0, target=3.0), 0, 1)  # the window is full: one step
    published = learner.take_outbox()
    assert learner.step == 1 and [p.offset for p in published] == [0, 1]
    assert not np.allclose(model.get_weights()[0], before[0])  # the step did learn

    x, _, mask, starts, slots, table, *_ = calls[0]  # the first (and only) step of the call
    x, mask = x[0], mask[0]
    states = table[slots[0]].transpose(1, 2, 0, 3)
    states[:, :, starts[0]] = 0.0
    frozen = build_model(settings)
    frozen.set_weights(before)
    wide_x = np.zeros((1, 3, 2), np.float32)
    wide_x[:, :2] = x
    wide_mask = np.zeros((1, 3), bool)
    wide_mask[:, :2] = mask
    expected, _ = frozen.infer(wide_x, wide_mask, states)
    # Targets: first of its key scales with (0, 1); the second with the first target's level.
    np.testing.assert_allclose(published[0].prediction, expected[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        published[1].prediction, expected[0, 1] * 2.0 + 2.0, rtol=1e-5, atol=1e-6
    )
