"""/healthz and /readyz on a real daemon: not ready before assignment, unhealthy while a train
step is blocked, healthy again once it returns."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from daemon.app import build_daemon
from daemon.kafka_io import client_options, produce_values
from daemon.settings import (
    HealthSettings,
    KafkaSettings,
    MetricsSettings,
    ModelSettings,
    Settings,
    SnapshotSettings,
    StreamSettings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _status(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait_status(port: int, path: str, code: int, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = _status(port, path)
        if status == code:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered {code}")


def test_health_flips_while_a_train_step_blocks_and_readiness_waits_for_assignment(
    broker, tmp_path
):
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
        model=ModelSettings(n_features=1, units=4, batch_size=2, window=2),
        stream=StreamSettings(max_batch_wait_ms=0),
        snapshot=SnapshotSettings(directory=tmp_path),
        metrics=MetricsSettings(host="127.0.0.1", port=0),
        health=HealthSettings(stall_s=1.0),
    )
    options = client_options(settings.kafka, broker.bootstrap)
    daemon = build_daemon(settings, options)
    port = daemon.endpoints.port
    try:
        status, body = _status(port, "/readyz")
        assert status == 503 and "no partitions assigned" in body  # not polled yet
        assert _status(port, "/healthz")[0] == 200

        release = threading.Event()
        entered = threading.Event()
        train_step = daemon.model.train_step

        def blocking_step(*args):
            entered.set()
            release.wait(30)
            return train_step(*args)

        daemon.model.train_step = blocking_step
        loop = threading.Thread(target=daemon.runner.run, daemon=True)
        loop.start()
        _wait_status(port, "/readyz", 200)

        events = [
            (b"k", json.dumps({"key": "k", "ts": t, "features": [t], "target": [t]}).encode())
            for t in range(4)
        ]
        produce_values(options, settings.kafka.input_topic, events)
        assert entered.wait(30), "no train step started"
        body = _wait_status(port, "/healthz", 503, timeout_s=10)
        assert "no progress" in body

        release.set()
        _wait_status(port, "/healthz", 200, timeout_s=10)
    finally:
        release.set()
        daemon.runner.request_stop()
        loop.join(30)
        daemon.close()
