"""Shared scaffolding of the integration tests: isolated daemon settings, HTTP probes, waiting."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from daemon.settings import (
    KafkaSettings,
    MetricsSettings,
    ModelSettings,
    Settings,
    SnapshotSettings,
    StreamSettings,
)


def daemon_settings(
    bootstrap: str,
    snapshot_dir: Path,
    model: ModelSettings | None = None,
    stream: StreamSettings | None = None,
    **sections: object,
) -> Settings:
    """Return settings with topics and a group of their own, a free HTTP port, and snapshots in
    `snapshot_dir` (never the working directory). Small model unless `model` is given."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            input_topic=f"in-{tag}",
            predictions_topic=f"pred-{tag}",
            dead_letter_topic=f"dlq-{tag}",
            metrics_topic=f"metrics-{tag}",
            group_id=f"g-{tag}",
        ),
        model=model or ModelSettings(n_features=2, n_targets=1, units=8, batch_size=4, window=4),
        stream=stream or StreamSettings(max_batch_wait_ms=0),
        metrics=sections.pop("metrics", MetricsSettings(host="127.0.0.1", port=0, every_steps=5)),
        snapshot=sections.pop("snapshot", SnapshotSettings(directory=snapshot_dir)),
        **sections,
    )


def http_status(port: int, path: str) -> tuple[int, str]:
    """GET a path of the daemon's endpoints; return (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
