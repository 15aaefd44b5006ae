"""A broker outage of ~15 s: the daemon stays up, reports not-ready, logs one line per change,
reconnects and goes on with new events."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from daemon.app import build_daemon, topics
from daemon.embedded import EmbeddedBroker
from daemon.kafka_io import client_options, ensure_topics, produce_values, read_all
from daemon.settings import (
    KafkaSettings,
    MetricsSettings,
    ModelSettings,
    Settings,
    SnapshotSettings,
    StreamSettings,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    # kafka-python leaves the sockets of failed reconnect attempts to the garbage collector.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket"),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

OUTAGE_S = 15


def _events(start_day: int, days: int) -> list[tuple[bytes, bytes]]:
    return [
        (key.encode(), json.dumps({"key": key, "ts": d * 60.0, "features": [d % 5]}).encode())
        for d in range(start_day, start_day + days)
        for key in ("a", "b", "c")
    ]


def _ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_rides_out_a_broker_outage(tmp_path, caplog):
    broker = EmbeddedBroker()
    broker.start()
    port = broker.port
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            input_topic=f"in-{tag}",
            predictions_topic=f"p-{tag}",
            dead_letter_topic=f"d-{tag}",
            metrics_topic=f"m-{tag}",
            group_id=f"g-{tag}",
        ),
        model=ModelSettings(n_features=1, units=4, batch_size=4, window=3),
        stream=StreamSettings(max_batch_wait_ms=0),
        snapshot=SnapshotSettings(directory=tmp_path, every_steps=2),
        metrics=MetricsSettings(host="127.0.0.1", port=0),
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
        _wait(lambda: len(read_all(options, predictions, idle_s=0.5)) >= len(first), 60, "before")
        _wait(lambda: _ready(daemon.endpoints.port)[0] == 200, 30, "ready")

        broker.stop()
        _wait(lambda: _ready(daemon.endpoints.port)[0] == 503, 30, "not ready")
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
        _wait(lambda: len(read_all(options, predictions, idle_s=0.5)) >= len(second), 90, "after")
        _wait(lambda: _ready(daemon.endpoints.port)[0] == 200, 60, "ready again")
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
