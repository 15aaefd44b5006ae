"""A runner with in-memory Kafka edges and the real model, shared by the loop's unit tests."""

from __future__ import annotations

import json

from fakes import FakePublisher, FakeSource

from daemon.core.learner import OnlineLearner
from daemon.model.lstm import build_model
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.snapshots import SnapshotStore
from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.runner import Runner
from daemon.settings import KafkaSettings, ModelSettings, Settings, SnapshotSettings, StreamSettings

KEYS = ["a", "b", "c"]


def values_for(days: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"key": k, "ts": d, "features": [float(d % 5 + i)], "target": [1.0]}).encode()
        for d in range(start, start + days)
        for i, k in enumerate(KEYS)
    ]


class Harness:
    def __init__(self, tmp_path, values, kafka=None, stream=None, state_topic=None, **snapshot):
        snapshot.setdefault("every_steps", 2)
        snapshot.setdefault("every_s", 0)
        self.settings = Settings(
            kafka=kafka or KafkaSettings(),
            model=ModelSettings(n_features=1, units=4, batch_size=2, window=2),
            stream=stream or StreamSettings(max_batch_wait_ms=0),
            snapshot=SnapshotSettings(directory=tmp_path / "snaps", **snapshot),
        )
        self.model = build_model(self.settings)
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
            state_topic=state_topic,
        )
        self.source.on_revoke = self.runner.moves.on_revoke

    def turns(self, n: int) -> None:
        for _ in range(n):
            self.runner._poll_once()
            self.clock[0] += 1.0

    def metric(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0
