"""An honest network outage (issue 11): every client connection goes through a TCP proxy the
test owns, which is cut both ways for 15 s while events are in flight and predictions queued.
The broker keeps its data throughout. Afterwards every offset has a prediction, no event was
trained twice, /readyz went 503 and back, and one log line marks each change."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from daemon_helpers import daemon_settings, http_status, wait_for
from tcp_proxy import TcpProxy

from daemon.edges.embedded import HOST, EmbeddedBroker, _free_port
from daemon.edges.kafka_io import client_options, produce_values, read_all
from daemon.service.app import build_daemon
from daemon.settings import ModelSettings, SnapshotSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OUTAGE_S = 15
KEYS = ("a", "b", "c")
EVENTS_PER_KEY = 1500


def _events() -> list[tuple[bytes, bytes]]:
    return [
        (
            key.encode(),
            json.dumps(
                {"key": key, "ts": d * 60.0, "features": [d % 5], "target": [(d + 1) % 5]}
            ).encode(),
        )
        for d in range(EVENTS_PER_KEY)
        for key in KEYS
    ]


def _ready(port: int) -> int:
    return http_status(port, "/readyz")[0]


def test_daemon_rides_out_a_network_cut_without_losing_or_retraining_anything(tmp_path, caplog):
    proxy_port = _free_port()
    broker = EmbeddedBroker(advertised_url=f"tcp://{HOST}:{proxy_port}")
    broker.start()
    proxy = TcpProxy((HOST, broker.port), port=proxy_port)
    bootstrap = f"{HOST}:{proxy.port}"
    settings = daemon_settings(
        bootstrap,
        tmp_path,
        model=ModelSettings(n_features=1, units=4, batch_size=4, window=3),
        snapshot=SnapshotSettings(directory=tmp_path, every_steps=20, every_s=1),
    )
    options = client_options(settings.kafka, bootstrap)
    caplog.set_level(logging.INFO, logger="lstmd")
    daemon = build_daemon(settings, options)
    loop = threading.Thread(target=daemon.runner.run, daemon=True)
    events = _events()
    readiness: list[int] = []
    try:
        loop.start()
        wait_for(lambda: _ready(daemon.endpoints.port) == 200, 60, "ready")
        produce_values(options, settings.kafka.input_topic, events)
        # Cut while the daemon is part-way: events fetched, predictions queued or in flight.
        wait_for(lambda: daemon.runner.consumed >= 300, 60, "events in flight")
        proxy.cut()
        cut_at, answered_at_cut = time.monotonic(), daemon.runner.consumed
        while time.monotonic() - cut_at < OUTAGE_S:
            readiness.append(_ready(daemon.endpoints.port))
            time.sleep(0.5)
        assert loop.is_alive(), "the daemon exited during the outage"
        proxy.restore()
        wait_for(lambda: daemon.runner.consumed >= len(events), 120, "every event consumed")
        wait_for(lambda: _ready(daemon.endpoints.port) == 200, 60, "ready again")
        assert loop.is_alive()
    finally:
        daemon.runner.request_stop()
        loop.join(90)
        daemon.close()
    try:
        predictions = read_all(options, settings.kafka.predictions_topic, timeout_s=60)
    finally:
        proxy.cut()
        broker.stop()
    offsets = [json.loads(r.value)["source_offset"] for r in predictions]
    assert set(offsets) == set(range(len(events))), "an offset has no prediction"
    learner = daemon.learner
    # Each event is trained at most once: the count never exceeds the events, and only the
    # last < window events of each key may still wait in a buffer at the end.
    window = settings.model.window
    assert len(events) - len(KEYS) * window <= learner.trained_events <= len(events)
    assert daemon.runner.consumed == len(events)  # nothing re-read: no replay
    assert 503 in readiness, f"/readyz never went 503 during the cut: {readiness}"
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lstmd")]
    assert messages.count("broker connection lost; reconnecting with backoff") == 1
    assert messages.count("broker connection restored") == 1
    print(
        f"\noutage: {len(events)} events, cut after {answered_at_cut} consumed for {OUTAGE_S} s; "
        f"predictions {len(offsets)} ({len(offsets) - len(set(offsets))} duplicates), "
        f"trained {learner.trained_events}"
    )
