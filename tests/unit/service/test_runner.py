"""The loop with in-memory Kafka edges and the real model: offsets follow acknowledged
snapshots, disk faults back off and recover, divergence rolls back to the last good snapshot."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from fakes import TOPIC, FakePublisher, FakeSource

from daemon.core.learner import OnlineLearner
from daemon.model.lstm import StatefulLSTM
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.snapshots import SnapshotStore
from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.runner import Runner
from daemon.settings import ModelSettings, Settings, SnapshotSettings, StreamSettings

KEYS = ["a", "b", "c"]


def _values(days: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"key": k, "ts": d, "features": [float(d % 5 + i)], "target": [1.0]}).encode()
        for d in range(start, start + days)
        for i, k in enumerate(KEYS)
    ]


class Harness:
    def __init__(self, tmp_path, values, **snapshot):
        snapshot.setdefault("every_steps", 2)
        snapshot.setdefault("every_s", 0)
        self.settings = Settings(
            model=ModelSettings(n_features=1, units=4, batch_size=2, window=2),
            stream=StreamSettings(max_batch_wait_ms=0),
            snapshot=SnapshotSettings(directory=tmp_path / "snaps", **snapshot),
        )
        self.model = StatefulLSTM(self.settings.model)
        self.learner = OnlineLearner(self.settings, self.model)
        self.store = SnapshotStore(self.settings.snapshot.directory, keep=3)
        self.checkpointer = Checkpointer(self.store, self.learner, self.model, self.settings.model)
        self.metrics = DaemonMetrics()
        self.source = FakeSource(values)
        self.publisher = FakePublisher()
        self.clock = [0.0]
        self.runner = Runner(
            self.settings,
            self.source,
            self.publisher,
            self.learner,
            self.metrics,
            self.checkpointer,
            Health(60, 0.0),
            clock=lambda: self.clock[0],
        )

    def turns(self, n: int) -> None:
        for _ in range(n):
            self.runner._poll_once()
            self.clock[0] += 1.0

    def metric(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0


def test_offsets_are_committed_only_with_a_snapshot_after_every_record_is_acknowledged(tmp_path):
    h = Harness(tmp_path, _values(10))
    h.publisher.failing = 2
    h.turns(3)  # fails at t=0, retries at t=1 and fails, backs off 2 s
    assert h.learner.step >= 2
    assert h.source.commits == [] and h.store.list() == []  # nothing acknowledged yet
    assert h.metric("lstmd_predictions_failed_total") == 2
    h.clock[0] += 10  # past the backoff
    h.turns(2)
    [info] = h.store.list()[-1:]
    assert h.source.commits[-1] == {(TOPIC, 0): info.offsets[0]}


def test_unwritable_snapshot_directory_keeps_running_backs_off_and_recovers(tmp_path, caplog):
    blocker = tmp_path / "snaps"
    blocker.write_text("a file where the directory should be")
    h = Harness(tmp_path, _values(40))
    with caplog.at_level(logging.INFO):
        h.turns(12)
    assert h.metric("lstmd_snapshot_failures_total") >= 2
    assert h.source.commits == []
    failures = [r for r in caplog.records if r.getMessage().startswith("snapshot failed")]
    assert len(failures) == 1  # one line per state change, not one per attempt
    assert h.metric("lstmd_snapshot_failures_total") < 12  # backed off
    blocker.unlink()
    h.clock[0] += 120
    with caplog.at_level(logging.INFO):
        h.turns(3)
    assert h.store.list() and h.source.commits
    assert "snapshots recovered" in [r.getMessage() for r in caplog.records]


def test_consecutive_nonfinite_steps_roll_back_to_the_last_good_snapshot(tmp_path, caplog):
    h = Harness(tmp_path, _values(8))
    h.turns(4)
    good = h.store.list()[-1]
    weights = h.model.get_weights()
    train_step = h.model.train_step

    def diverged(*args):
        _, predictions, states = train_step(*args)
        return math.nan, predictions, states * np.nan

    h.model.train_step = diverged
    h.source.append(_values(8, start=8))
    with caplog.at_level(logging.INFO):
        h.turns(3)
    assert h.metric("lstmd_nonfinite_losses_total") >= 3
    assert h.metric("lstmd_rollbacks_total") >= 1
    assert "training diverged; rolled back to the last good snapshot" in [
        r.getMessage() for r in caplog.records
    ]
    assert h.source.seeks[-1] == ((TOPIC, 0), good.offsets[0])
    assert not any(np.isnan(s.states).any() for s in h.learner.stores.values())
    h.model.train_step = train_step
    h.turns(6)
    assert h.source.drained and h.learner.consecutive_nonfinite == 0
    assert all(np.isfinite(w).all() for w in h.model.get_weights())
    assert len(weights) == len(h.model.get_weights())


@pytest.mark.parametrize("reason", ["shutdown"])
def test_shutdown_answers_every_event_and_commits_the_final_snapshot(tmp_path, reason):
    h = Harness(tmp_path, _values(5))
    h.runner.run(until=lambda r: h.source.drained)
    answered = len(h.publisher.predictions()) + len(h.publisher.dead)
    assert answered == len(h.source.messages) == h.runner.consumed
    assert h.source.commits[-1] == {(TOPIC, 0): len(h.source.messages)}
    assert h.source.closed
