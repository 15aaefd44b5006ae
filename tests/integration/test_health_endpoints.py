"""/healthz and /readyz on a real daemon: not ready before assignment, unhealthy while a train
step is blocked, healthy again once it returns."""

from __future__ import annotations

import json
import threading

import pytest
from daemon_helpers import daemon_settings, http_status, wait_for

from daemon.edges.kafka_io import client_options, produce_values
from daemon.service.app import build_daemon
from daemon.settings import (
    HealthSettings,
    ModelSettings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def wait_status(port: int, path: str, code: int, timeout_s: float = 30) -> str:
    wait_for(lambda: http_status(port, path)[0] == code, timeout_s, f"{path} answering {code}")
    return http_status(port, path)[1]


def test_health_flips_while_a_train_step_blocks_and_readiness_waits_for_assignment(
    broker, tmp_path
):
    settings = daemon_settings(
        broker.bootstrap,
        tmp_path,
        model=ModelSettings(n_features=1, units=4, batch_size=2, window=2),
        health=HealthSettings(stall_s=1.0),
    )
    options = client_options(settings.kafka, broker.bootstrap)
    daemon = build_daemon(settings, options)
    port = daemon.endpoints.port
    try:
        status, body = http_status(port, "/readyz")
        assert status == 503 and "no partitions assigned" in body  # not polled yet
        assert http_status(port, "/healthz")[0] == 200

        release = threading.Event()
        entered = threading.Event()
        train_steps = daemon.model.train_steps

        def blocking_step(*args):
            entered.set()
            release.wait(30)
            return train_steps(*args)

        daemon.model.train_steps = blocking_step
        loop = threading.Thread(target=daemon.runner.run, daemon=True)
        loop.start()
        wait_status(port, "/readyz", 200)

        events = [
            (b"k", json.dumps({"key": "k", "ts": t, "features": [t], "target": [t]}).encode())
            for t in range(4)
        ]
        produce_values(options, settings.kafka.input_topic, events)
        assert entered.wait(30), "no train step started"
        body = wait_status(port, "/healthz", 503, timeout_s=10)
        assert "no progress" in body

        release.set()
        wait_status(port, "/healthz", 200, timeout_s=10)
    finally:
        release.set()
        daemon.runner.request_stop()
        loop.join(30)
        daemon.close()
