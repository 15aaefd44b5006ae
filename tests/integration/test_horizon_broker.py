"""A horizon H = 3 end to end on the real embedded broker, input over three partitions: every
forecast event gets one prediction of three values per target, an event with its own target is
dead-lettered naming `model.horizon`, and the metrics topic scores each step ahead."""

from __future__ import annotations

import json

import pytest
from daemon_helpers import daemon_settings

from daemon.edges.kafka_io import client_options, ensure_topics, produce_values, read_all
from daemon.service.app import build_daemon
from daemon.settings import MetricsSettings, ModelSettings

pytestmark = pytest.mark.integration

KEYS = [f"meter-{i}" for i in range(8)]
DAYS = 14
HORIZON = 3


def _event(key: str, day: int, target: bool = False) -> bytes:
    event = {"key": key, "ts": 1_700_000_000 + 86_400 * day, "features": [day % 7, 10.0 + day]}
    if target:
        event["target"] = [1.0]
    return json.dumps(event).encode()


def test_h3_predictions_hold_three_values_per_target_and_steps_are_scored(tmp_path, broker):
    settings = daemon_settings(
        broker.bootstrap,
        tmp_path,
        model=ModelSettings(
            n_features=2, target_index=(1,), units=8, batch_size=4, window=2, horizon=HORIZON
        ),
        metrics=MetricsSettings(host="127.0.0.1", port=0, every_steps=1),
    )
    options = client_options(settings.kafka, broker.bootstrap)
    ensure_topics(options, [settings.kafka.input_topic], partitions=3)
    messages = [(k.encode(), _event(k, d)) for d in range(DAYS) for k in KEYS]
    supervised_at = len(messages)
    messages.append((b"meter-0", _event("meter-0", DAYS, target=True)))
    daemon = build_daemon(settings, options)
    produce_values(options, settings.kafka.input_topic, messages)
    try:
        daemon.runner.run(until=lambda r: r.consumed >= len(messages))
    finally:
        daemon.close()

    predictions = [json.loads(r.value) for r in read_all(options, settings.kafka.predictions_topic)]
    assert len(predictions) == len(messages) - 1
    assert len({(p["source_partition"], p["source_offset"]) for p in predictions}) == len(
        predictions
    )
    assert len({p["source_partition"] for p in predictions}) > 1  # keys over partitions
    for p in predictions:
        assert p["mode"] == "forecast" and len(p["prediction"]) == 1
        assert len(p["prediction"][0]) == HORIZON and None not in p["prediction"][0]

    dead = read_all(options, settings.kafka.dead_letter_topic)
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["lstmd-reason"] == b"bad_target"
    assert b"model.horizon" in headers["lstmd-detail"]
    assert dead[0].value == messages[supervised_at][1]

    metrics = [json.loads(r.value) for r in read_all(options, settings.kafka.metrics_topic)]
    steps = metrics[-1]["prequential_mae_per_step"]
    assert len(steps) == HORIZON and all(v is not None and v >= 0 for v in steps)
    # Only events with three successors train; the rest still wait, none is lost.
    learner = daemon.learner
    assert 0 < learner.trained_events <= len(KEYS) * (DAYS - HORIZON)
    assert learner.trained_events + learner.pending_events() == len(KEYS) * DAYS
    assert learner.untrained == 0
