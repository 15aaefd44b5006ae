"""Answers with a forecast horizon: the predictions topic carries H values per target and the
metrics topic the prequential MAE per step ahead."""

import json

import numpy as np
from fakes import FakePublisher
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.service.answers import Answers
from daemon.service.metrics import DaemonMetrics
from daemon.settings import MetricsSettings, ModelSettings, Settings, StreamSettings


def _answers(horizon):
    settings = Settings(
        model=ModelSettings(n_features=2, batch_size=2, window=2, horizon=horizon),
        stream=StreamSettings(max_batch_wait_ms=0),
        metrics=MetricsSettings(every_steps=1),
    )
    model = ToyModel.for_settings(settings)
    model.wo = np.zeros((model.wo.shape[0], horizon))  # one output per step ahead, all zero
    learner = OnlineLearner(settings, model, clock=lambda: 0.0)
    publisher = FakePublisher()
    return Answers(settings, publisher, learner, DaemonMetrics(), clock=lambda: 0.0), learner


def _run(answers, learner, days=8):
    for day in range(days):
        for i, key in enumerate("ab"):
            event = Event(key, float(day), np.array([float(day + i), 1.0]), None, False)
            assert learner.ingest(event, 0, 2 * day + i) is None
        learner.end_of_poll()
        answers.publish(consumed=2 * day + 2, lag=0)


def test_predictions_hold_h_values_and_metrics_hold_the_mae_per_step():
    answers, learner = _answers(horizon=3)
    _run(answers, learner)
    publisher = answers._publisher
    predictions = [json.loads(v) for v in publisher.predictions()]
    assert len(predictions) == 16
    assert all(len(p["prediction"]) == 1 and len(p["prediction"][0]) == 3 for p in predictions)
    messages = [json.loads(v) for t, _, v in publisher.sent if t == "lstmd-metrics"]
    assert messages, "a metrics message every step"
    last = messages[-1]
    # The series rise by 1 a day, so the last value is off by h at step h. The toy's zero
    # output is no change from the last value under difference scaling: the same errors.
    assert last["naive_mae_per_step"] == [1.0, 2.0, 3.0]
    assert last["prequential_mae_per_step"] == [1.0, 2.0, 3.0]


def test_without_a_horizon_the_metrics_message_is_unchanged():
    answers, learner = _answers(horizon=1)
    _run(answers, learner)
    messages = [json.loads(v) for t, _, v in answers._publisher.sent if t == "lstmd-metrics"]
    assert messages and all("prequential_mae_per_step" not in m for m in messages)
