"""The train step's handling of a bad step, with a numpy toy model over two partitions: a
non-finite loss keeps the keys' states and loses the step's events (counted, offsets kept, not
scored), the run of non-finite steps ends with a finite one, and a model error stops the step
without counting it."""

import math

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner, TrainStepFailed
from daemon.settings import ModelSettings, Settings, StreamSettings

KEYS = {"a": 0, "b": 1}  # key -> input partition


class DivergingModel(ToyModel):
    """The toy model, whose steps can be switched to a NaN loss and NaN states, or to raise."""

    diverge = False
    error: Exception | None = None

    def train_step(self, x, y, mask, states):
        if self.error is not None:
            raise self.error
        loss, predictions, new_states = super().train_step(x, y, mask, states)
        if self.diverge:
            return math.nan, predictions, new_states * np.nan
        return loss, predictions, new_states


def _learner():
    settings = Settings(
        model=ModelSettings(n_features=1, n_targets=1, target_index=(0,), batch_size=4, window=3),
        stream=StreamSettings(max_batch_wait_ms=0),
    )
    model = DivergingModel.for_settings(settings)
    return OnlineLearner(settings, model, clock=lambda: 0.0), model


def _ingest(learner, days):
    """Feed each key a value per day; return the (partition, offset) of every event fed."""
    fed = []
    for day in days:
        for key, partition in KEYS.items():
            offset = 100 * partition + day  # distinct per partition, known to the test
            event = Event(key, float(day), np.array([1.0 + day * (1 + partition)]), None, False)
            assert learner.ingest(event, partition, offset) is None
            fed.append((partition, offset))
    return fed


def _states(learner):
    return {p: store.states.copy() for p, store in learner.stores.items()}


def test_a_nonfinite_step_keeps_the_states_and_counts_its_events_untrained():
    learner, model = _learner()
    fed = _ingest(learner, range(4))  # both keys hold a full window: one finite step
    assert learner.step == 1 and learner.trained_events == 6
    fed += _ingest(learner, range(4, 6))  # two trainable events per key: below a window
    before, scored = _states(learner), learner.prequential.count
    assert all(s.any() for s in before.values())  # trained states, not zeros
    model.diverge = True
    assert learner.train()
    assert learner.step == 2 and learner.nonfinite_losses == 1
    assert learner.consecutive_nonfinite == 1 and math.isnan(learner.last_loss)
    for partition, states in _states(learner).items():
        np.testing.assert_array_equal(states, before[partition])
    assert learner.untrained == 4 and learner.trained_events == 6
    assert sorted(learner.nonfinite_offsets) == [(0, 3), (0, 4), (1, 103), (1, 104)]
    assert learner.prequential.count == scored  # a lost step's predictions are not scored
    published = learner.take_outbox()
    model.diverge = False
    learner.drain()
    published += learner.take_outbox()
    assert sorted((p.partition, p.offset) for p in published) == sorted(fed)


def test_a_finite_step_ends_the_run_of_nonfinite_ones():
    learner, model = _learner()
    model.diverge = True
    runs = []
    for day in range(3, 6):
        _ingest(learner, range(day - 3, day) if day == 3 else [day - 1])
        learner.train()
        runs.append(learner.consecutive_nonfinite)
    model.diverge = False
    _ingest(learner, [5, 6])
    assert learner.train() and math.isfinite(learner.last_loss)
    assert runs == [1, 2, 3] and learner.consecutive_nonfinite == 0
    assert learner.nonfinite_losses == 3 and learner.step == 4


def test_a_model_error_stops_the_step_without_counting_it():
    learner, model = _learner()
    _ingest(learner, range(3))
    model.error = ValueError("shape mismatch")
    with pytest.raises(TrainStepFailed, match="ValueError: shape mismatch"):
        learner.train()
    assert learner.step == 0 and learner.trained_events == 0 and learner.untrained == 0


def test_the_offsets_of_untrained_events_are_bounded_however_long_a_model_diverges(
    monkeypatch,
):
    from daemon.core import train_step

    monkeypatch.setattr(train_step, "NONFINITE_OFFSETS_KEPT", 5)
    learner, model = _learner()
    _ingest(learner, range(4))
    model.diverge = True
    for day in range(4, 40, 2):
        _ingest(learner, range(day, day + 2))
        learner.train()
    assert learner.nonfinite_losses > 3 and len(learner.nonfinite_offsets) == 5


def test_a_metrics_message_is_strict_json_even_with_nan_inside_lists():
    import json

    from daemon.core.records import encode_metrics

    def refuse(constant: str) -> float:
        raise ValueError(f"{constant} is not JSON")

    value = encode_metrics(
        {"loss": float("nan"), "steps": [1.0, float("inf")], "x": {"y": [math.nan]}}
    )
    assert json.loads(value, parse_constant=refuse) == {
        "loss": None,
        "steps": [1.0, None],
        "x": {"y": [None]},
    }
