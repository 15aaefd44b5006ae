"""An abort is an abort, against a real broker: after a train step fails mid-stream, nothing is
snapshotted, written to the state topic or committed, on any path (kafka-python's close fires
the revoke callback, which checkpoints unless the state was abandoned first)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from daemon_helpers import daemon_settings

from daemon.edges.kafka_io import client_options, committed_offsets, ensure_topics, produce_values
from daemon.edges.state_topic import StateTopic
from daemon.service.app import build_daemon
from daemon.service.runner import StateUntrusted
from daemon.settings import SnapshotSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 4
KEYS = [f"sensor-{i}" for i in range(12)]
DAYS = 40


def _events() -> list[tuple[bytes, bytes]]:
    return [
        (
            key.encode(),
            json.dumps(
                {"key": key, "ts": 1.7e9 + 86_400 * d, "features": [d % 7, i], "target": [1]}
            ).encode(),
        )
        for d in range(DAYS)
        for i, key in enumerate(KEYS)
    ]


def test_a_train_step_that_fails_mid_stream_leaves_commits_state_topic_and_snapshots_as_they_were(
    broker, tmp_path
) -> None:
    settings = daemon_settings(
        broker.bootstrap,
        tmp_path,
        snapshot=SnapshotSettings(directory=tmp_path, every_steps=4, every_s=0),
    )
    kafka = settings.kafka
    options = client_options(kafka, broker.bootstrap)
    ensure_topics(options, [kafka.input_topic], partitions=PARTITIONS)
    events = _events()
    produce_values(options, kafka.input_topic, events)
    daemon = build_daemon(settings, options)
    at_failure: dict[str, Any] = {}
    checkpoint = daemon.runner.checkpoint
    real_step = daemon.model.train_steps  # several queued steps run in one call

    def failing_step(*args: Any) -> Any:
        if daemon.learner.step < 30:
            return real_step(*args)
        at_failure["committed"] = dict(checkpoint.committed)
        at_failure["durable"] = dict(checkpoint.durable)
        at_failure["processed"] = dict(checkpoint.processed)
        at_failure["snapshots"] = sorted(p.name for p in tmp_path.iterdir())
        raise FloatingPointError("injected: the step blew up half-way")

    daemon.model.train_steps = failing_step
    try:
        with pytest.raises(StateUntrusted):
            daemon.runner.run(until=lambda runner: runner.consumed >= len(events))
    finally:
        daemon.close()

    assert at_failure, "the injected failure never ran"
    # The state the abort threw away was ahead of what was committed: a checkpoint on close
    # would have moved the commit.
    assert any(
        at_failure["processed"][p] != at_failure["committed"].get(p)
        for p in at_failure["processed"]
    )
    assert committed_offsets(options, kafka.group_id, kafka.input_topic) == {
        p: o for p, o in at_failure["committed"].items()
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == at_failure["snapshots"]
    reader = StateTopic(options, kafka.state_topic, f"{kafka.group_id}/{kafka.input_topic}")
    try:
        stored = reader.read(range(PARTITIONS))
    finally:
        reader.close()
    assert {p: s.offset for p, s in stored.items()} == at_failure["durable"]
