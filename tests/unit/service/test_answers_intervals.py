"""Intervals on the outputs: every prediction message carries them per level, the metrics topic
their coverage and interval score, and Prometheus `lstmd_interval_coverage{level}`."""

import json

import numpy as np
import pytest
from fakes import FakePublisher
from prometheus_client import CollectorRegistry
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.service.answers import Answers
from daemon.service.metrics import DaemonMetrics
from daemon.settings import (
    IntervalSettings,
    MetricsSettings,
    ModelSettings,
    Settings,
    StreamSettings,
)


def _answers(horizon=1, levels=(0.8, 0.95)):
    settings = Settings(
        model=ModelSettings(n_features=2, batch_size=2, window=2, horizon=horizon),
        stream=StreamSettings(max_batch_wait_ms=0),
        metrics=MetricsSettings(every_steps=1),
        intervals=IntervalSettings(levels=levels),
    )
    learner = OnlineLearner(settings, ToyModel.for_settings(settings), clock=lambda: 0.0)
    metrics = DaemonMetrics(CollectorRegistry())
    answers = Answers(settings, FakePublisher(), learner, metrics, clock=lambda: 0.0)
    return answers, learner, metrics


def _run(answers, learner, days=30):
    rng = np.random.default_rng(0)
    for day in range(days):
        for i, key in enumerate("ab"):
            value = 10.0 * (i + 1) + np.sin(day) + rng.normal(0, 0.5)
            event = Event(key, float(day), np.array([value, 1.0]), None, False)
            assert learner.ingest(event, 0, 2 * day + i) is None
        learner.end_of_poll()
        answers.publish(consumed=2 * day + 2, lag=0)


def test_prediction_messages_carry_each_levels_bounds_around_the_prediction():
    answers, learner, _ = _answers()
    _run(answers, learner)
    predictions = [json.loads(v) for v in answers._publisher.predictions()]
    assert len(predictions) == 60
    for p in predictions:
        assert [i["level"] for i in p["intervals"]] == [0.8, 0.95]
        inner, outer = p["intervals"]
        assert outer["lower"][0] <= inner["lower"][0] <= inner["upper"][0] <= outer["upper"][0]
        # Every field of before is still there, unchanged in shape.
        assert len(p["prediction"]) == 1 and p["mode"] == "forecast"


def test_with_a_horizon_bounds_are_shaped_like_the_prediction():
    answers, learner, _ = _answers(horizon=3, levels=(0.9,))
    _run(answers, learner, days=10)
    p = json.loads(answers._publisher.predictions()[-1])
    assert np.shape(p["prediction"]) == (1, 3)
    assert np.shape(p["intervals"][0]["lower"]) == (1, 3)
    assert np.shape(p["intervals"][0]["upper"]) == (1, 3)


def test_metrics_topic_and_prometheus_report_coverage_per_level():
    answers, learner, metrics = _answers()
    _run(answers, learner)
    messages = [json.loads(v) for t, _, v in answers._publisher.sent if t == "lstmd-metrics"]
    last = messages[-1]
    since_start = learner.interval_scores.coverage()
    assert last["interval_coverage"] == {"0.8": since_start[0.8], "0.95": since_start[0.95]}
    assert last["interval_score"]["0.95"] > 0
    registry = metrics.registry
    rolling = learner.interval_scores.rolling_coverage()
    for level, label in ((0.8, "0.8"), (0.95, "0.95")):
        value = registry.get_sample_value("lstmd_interval_coverage", {"level": label})
        assert value == pytest.approx(rolling[level])
        assert 0 < value <= 1
    assert registry.get_sample_value("lstmd_interval_score", {"level": "0.8"}) > 0


def test_without_levels_no_message_carries_intervals():
    answers, learner, metrics = _answers(levels=())
    _run(answers, learner, days=5)
    assert all("intervals" not in json.loads(v) for v in answers._publisher.predictions())
    messages = [json.loads(v) for t, _, v in answers._publisher.sent if t == "lstmd-metrics"]
    assert messages and all("interval_coverage" not in m for m in messages)
    assert metrics.registry.get_sample_value("lstmd_interval_coverage", {"level": "0.8"}) is None
