"""A broker outage of ~15 s: the daemon stays up, reports not-ready, logs one line per change,
reconnects and goes on with new events."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from daemon_helpers import daemon_settings, http_status, wait_for

from daemon.edges.embedded import EmbeddedBroker
from daemon.edges.kafka_io import client_options, ensure_topics, produce_values, read_all
from daemon.service.app import build_daemon, topics
from daemon.settings import (
    ModelSettings,
    SnapshotSettings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

OUTAGE_S = 15


def _events(start_day: int, days: int) -> list[tuple[bytes, bytes]]:
    return [
        (key.encode(), json.dumps({"key": key, "ts": d * 60.0, "features": [d % 5]}).encode())
        for d in range(start_day, start_day + days)
        for key in ("a", "b", "c")
    ]


def _ready(port: int) -> tuple[int, str]:
    return http_status(port, "/readyz")


def test_daemon_rides_out_a_broker_outage(tmp_path, caplog):
    broker = EmbeddedBroker()
    broker.start()
    port = broker.port
    settings = daemon_settings(
        broker.bootstrap,
        tmp_path,
        model=ModelSettings(n_features=1, units=4, batch_size=4, window=3),
        snapshot=SnapshotSettings(directory=tmp_path, every_steps=2),
    )
    options = client_options(settings.kafka, broker.bootstrap)
    caplog.set_level(logging.INFO, logger="lstmd")
    daemon = build_daemon(settings, options)
    loop = threading.Thread(target=daemon.runner.run, daemon=True)
    try:
        loop.start()
        first = _events(0, 20)
        produce_values(options, settings.kafka.input_topic, first)
        predictions = settings.kafka.predictions_topic
        wait_for(
            lambda: len(read_all(options, predictions, idle_s=0.5)) >= len(first), 60, "before"
        )
        wait_for(lambda: _ready(daemon.endpoints.port)[0] == 200, 30, "ready")

        broker.stop()
        wait_for(lambda: _ready(daemon.endpoints.port)[0] == 503, 30, "not ready")
        _, body = _ready(daemon.endpoints.port)
        assert "broker not connected" in body
        time.sleep(OUTAGE_S)
        assert loop.is_alive(), "the daemon exited during the outage"
        assert daemon.metrics.registry.get_sample_value("lstmd_broker_connected") == 0

        broker = EmbeddedBroker(port=port)  # memory-only: an empty cluster on the same address
        broker.start()
        ensure_topics(options, topics(settings))
        # What a persistent broker would still hold: the daemon resumes after it, at offset 60.
        produce_values(options, settings.kafka.input_topic, first)
        second = _events(100, 10)
        produce_values(options, settings.kafka.input_topic, second)
        wait_for(
            lambda: len(read_all(options, predictions, idle_s=0.5)) >= len(second), 90, "after"
        )
        wait_for(lambda: _ready(daemon.endpoints.port)[0] == 200, 60, "ready again")
        assert loop.is_alive()
    finally:
        daemon.runner.request_stop()
        loop.join(60)
        daemon.close()
        broker.stop()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lstmd")]
    assert messages.count("broker connection lost; reconnecting with backoff") == 1
    assert messages.count("broker connection restored") == 1
    lost = messages.index("broker connection lost; reconnecting with backoff")
    restored = messages.index("broker connection restored")
    assert restored - lost < 10, f"log storm during the outage: {messages[lost:restored]}"
