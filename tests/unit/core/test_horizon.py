"""The forecast horizon H with the numpy toy model: target rows assembled from an event's next H
values (hand-computed), training only once all H have arrived, sequence ends, supervised events
refused, the message shape and per-step prequential scoring."""

import json

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.events import Event, Reason
from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_partition, import_partition
from daemon.core.prequential import Prequential
from daemon.core.records import encode_prediction
from daemon.settings import ModelSettings, Settings, StreamSettings


def _settings(horizon=3, batch_size=1, window=3, n_targets=1, **stream):
    stream.setdefault("max_batch_wait_ms", 0)
    stream.setdefault("seasons", ())  # no derived features: the inputs are the event's own
    stream.setdefault("derived_calendar", False)
    stream.setdefault("derived_smoothing", False)
    return Settings(
        model=ModelSettings(
            n_features=2,
            n_targets=n_targets,
            target_index=tuple(range(n_targets)),
            batch_size=batch_size,
            window=window,
            horizon=horizon,
        ),
        stream=StreamSettings(**stream),
    )


class _Recording(ToyModel):
    """The toy model, keeping every train step's targets and mask."""

    def __init__(self, settings):
        m = settings.model
        super().__init__(m.batch_size, m.n_features, n_targets=m.n_targets * m.horizon)
        self.steps = []

    def train_step(self, x, y, mask, states):
        self.steps.append((y.copy(), mask.copy()))
        return super().train_step(x, y, mask, states)


def _learner(settings):
    model = _Recording(settings)
    return OnlineLearner(settings, model, clock=lambda: 0.0), model


def _event(key, ts, values, reset=False, target=None):
    values = np.atleast_1d(np.asarray(values, float))
    features = np.array([values[0], values[-1] if len(values) > 1 else 0.0])
    return Event(key, float(ts), features, target, reset)


def _feed(learner, events, start=0):
    published = []
    for offset, event in enumerate(events, start=start):
        assert learner.ingest(event, 0, offset) is None
        learner.end_of_poll()
        published += learner.take_outbox()
    return published


def test_h3_target_rows_are_the_next_three_values_scaled_around_the_level_at_t():
    learner, model = _learner(_settings(horizon=3, window=3))
    values = [10, 11, 13, 12, 14, 17]
    _feed(learner, [_event("a", t, v) for t, v in enumerate(values)])
    # Events 0, 1, 2 became trainable at the arrival of 3, 4, 5: one full window, one step.
    assert len(model.steps) == 1
    y, mask = model.steps[0]
    # Difference scaling, by hand. t=0: no step seen yet, spread = max(|10|, 1) = 10.
    # t=1: one step (1): spread of the features 10, 11 = sqrt(0.5 / 2) = 0.5.
    # t=2: steps 1, 2: spread sqrt(0.5 / 2) = 0.5. Each row: (v[t+h] - v[t]) / spread.
    expected = [
        [(11 - 10) / 10, (13 - 10) / 10, (12 - 10) / 10],
        [(13 - 11) / 0.5, (12 - 11) / 0.5, (14 - 11) / 0.5],
        [(12 - 13) / 0.5, (14 - 13) / 0.5, (17 - 13) / 0.5],
    ]
    np.testing.assert_allclose(y[0][mask[0]], expected, rtol=1e-6)


def test_two_targets_lay_their_steps_out_target_by_target():
    settings = _settings(horizon=2, window=1, n_targets=2, normalise=False)
    learner, model = _learner(settings)
    rows = [(1, 100), (2, 200), (3, 300)]
    _feed(learner, [_event("a", t, row) for t, row in enumerate(rows)])
    y, mask = model.steps[0]
    # Target i, step h at i * H + h - 1: [x1, x2, feature1 at 1, at 2] for the event at t=0.
    np.testing.assert_array_equal(y[mask], [[2, 3, 200, 300]])


def test_an_event_trains_only_once_its_h_successors_arrived():
    learner, model = _learner(_settings(horizon=3, window=1))
    events = [_event("a", t, float(t)) for t in range(6)]
    for offset, event in enumerate(events):
        learner.ingest(event, 0, offset)
        learner.end_of_poll()
        # Event t trains when t + 3 arrives: after event k, max(0, k - 2) events trained.
        assert learner.trained_events == max(0, offset - 2)
    assert len(model.steps) == 3


@pytest.mark.parametrize(
    "ending",
    [
        {"reset": True},  # the event flag
        {"gap": 100},  # an event-time gap past reset_after_idle_s
    ],
)
def test_a_sequence_end_drops_the_events_short_of_h_successors_but_answers_them(ending):
    learner, model = _learner(_settings(horizon=3, window=2, reset_after_idle_s=10))
    events = [_event("a", t, float(t)) for t in range(5)]
    events.append(_event("a", 4 + ending.get("gap", 1), 9.0, reset=ending.get("reset", False)))
    published = _feed(learner, events)
    # Events 0 and 1 have three successors (2, 3, 4) before the end; 2, 3, 4 never get them.
    assert learner.untrained == 3
    assert learner.trained_events == 2
    assert sorted(p.offset for p in published) == list(range(6))  # every event answered
    trained_targets = np.concatenate([y[m] for y, m in model.steps])
    assert trained_targets.shape == (2, 3)
    assert learner.pending_events() == 1  # the new sequence's first event


def test_a_key_dropped_from_the_store_counts_its_waiting_events_as_untrained():
    learner, _ = _learner(_settings(horizon=3, window=4, max_keys=1))
    published = _feed(learner, [_event("a", t, float(t)) for t in range(4)])
    published += _feed(learner, [_event("b", 4, 1.0)], start=4)
    assert learner.resets["dropped"] == 1
    assert learner.untrained == 4  # one trainable (0) and three waiting, none trained
    assert sorted(p.offset for p in published) == list(range(5))


def test_with_a_horizon_an_event_carrying_its_own_target_is_refused_naming_the_setting():
    learner, _ = _learner(_settings(horizon=2))
    rejection = learner.ingest(_event("a", 0, 1.0, target=np.array([2.0])), 0, 0)
    assert rejection is not None and rejection.reason == Reason.BAD_TARGET
    assert "model.horizon" in rejection.detail
    assert learner.keys_in_store() == 0 and learner.pending_events() == 0


def test_the_message_carries_a_list_of_h_values_per_target():
    learner, _ = _learner(_settings(horizon=3, n_targets=2))
    published = _feed(learner, [_event("a", 0, (1.0, 5.0))])
    assert published[0].prediction.shape == (2, 3)
    message = json.loads(encode_prediction(published[0], "in"))
    assert [len(values) for values in message["prediction"]] == [3, 3]
    flat = published[0].prediction.ravel().tolist()
    assert [v for values in message["prediction"] for v in values] == pytest.approx(flat)

    plain, _ = _learner(_settings(horizon=1, n_targets=2))
    message = json.loads(encode_prediction(_feed(plain, [_event("a", 0, (1.0, 5.0))])[0], "in"))
    assert len(message["prediction"]) == 2 and all(
        isinstance(v, float) for v in message["prediction"]
    )


def test_prequential_scores_each_step_ahead_against_its_own_value():
    learner, _ = _learner(_settings(horizon=3, window=1, normalise=False))
    # Frozen toy model: a key's value 0, 1, 2, ... The naive forecast of every step is the
    # level at t, so its error at step h is h.
    _feed(learner, [_event("a", t, float(t)) for t in range(8)])
    p = learner.prequential
    assert p.step_count == [5, 5, 5]
    assert p.step_naive_maes() == pytest.approx([1.0, 2.0, 3.0])
    assert p.naive_mae == pytest.approx(2.0)
    assert p.model_mae == pytest.approx(np.mean(p.step_maes()))


def test_prequential_by_hand_for_two_targets():
    p = Prequential(horizon=2)
    target = np.array([[1.0, 2.0, 10.0, 20.0]])  # target 0 steps 1, 2; target 1 steps 1, 2
    p.add(target + np.array([[1, 3, -1, -5]]), np.zeros_like(target), target)
    assert p.step_maes() == pytest.approx([(1 + 1) / 2, (3 + 5) / 2])
    assert p.step_naive_maes() == pytest.approx([(1 + 10) / 2, (2 + 20) / 2])
    assert p.model_mae == pytest.approx(10 / 4)


def test_a_partition_state_of_another_horizon_is_refused_naming_it():
    three, _ = _learner(_settings(horizon=3))
    _feed(three, [_event("a", t, float(t)) for t in range(4)])
    arrays, meta = export_partition(three, 0)
    one, _ = _learner(_settings(horizon=1))
    with pytest.raises(ValueError, match=r"model\.horizon"):
        import_partition(one, arrays, meta, now=0.0)
    same, _ = _learner(_settings(horizon=3))
    assert import_partition(same, arrays, meta, now=0.0) == 0
    assert same.pending_events() == three.pending_events() == 4
