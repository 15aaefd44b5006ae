"""PartitionMoves: a partition state that does not fit the settings is skipped, not half-loaded."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from toy_model import ToyModel

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_partition
from daemon.persist.partition_state import pack_keys
from daemon.service.metrics import DaemonMetrics
from daemon.service.partitions import PartitionMoves
from daemon.settings import ModelSettings, Settings, StreamSettings

TOPIC = "in"


def _learner(horizon: int) -> OnlineLearner:
    settings = Settings(
        model=ModelSettings(n_features=1, batch_size=1, window=2, horizon=horizon),
        stream=StreamSettings(
            max_batch_wait_ms=0, seasons=(), derived_calendar=False, derived_smoothing=False
        ),
    )
    model = ToyModel(1, 1, n_targets=horizon)
    return OnlineLearner(settings, model, clock=lambda: 0.0)


def _feed(learner: OnlineLearner, partition: int, keys: list[str]) -> None:
    for offset, key in enumerate(keys):
        learner.ingest(
            Event(key, float(offset), np.array([float(offset)]), None, False), partition, offset
        )


class _Checkpoint:
    def __init__(self, processed: dict[int, int]) -> None:
        self.processed = dict(processed)
        self.adopted: list[tuple[int, int, bool]] = []

    def adopt(self, partition: int, offset: int, durable: bool) -> None:
        self.adopted.append((partition, offset, durable))
        self.processed[partition] = offset

    def forget(self, partitions) -> None:
        for partition in partitions:
            self.processed.pop(partition, None)


class _Source:
    def __init__(self) -> None:
        self.seeks: dict[int, int] = {}

    def seek(self, partition, offset: int) -> None:
        self.seeks[partition[1]] = offset


class _StateTopic:
    def __init__(self, states) -> None:
        self.states = states

    def read(self, partitions):
        return {p: self.states[p] for p in partitions if p in self.states}


def _metrics() -> DaemonMetrics:
    return DaemonMetrics()


def _state_of_horizon_3(offset: int):
    other = _learner(horizon=3)
    _feed(other, 0, ["x", "y", "x", "y", "x"])
    return dataclasses.replace(pack_keys(*export_partition(other, 0)), offset=offset)


def _assign_partition_0(
    learner: OnlineLearner, checkpoint: _Checkpoint, state, metrics: DaemonMetrics | None = None
) -> _Source:
    """Assign partition 0, whose state the state topic holds; return the seeks it made."""
    source = _Source()
    moves = PartitionMoves(
        TOPIC,
        source,
        learner,
        checkpoint,
        metrics or _metrics(),
        state_topic=_StateTopic({0: state}),
    )
    moves.on_assign({(TOPIC, 0)})
    return source


def test_a_state_of_other_settings_is_skipped_and_the_partition_starts_empty(caplog) -> None:
    learner = _learner(horizon=1)
    _feed(learner, 0, ["a", "b", "a"])  # the local snapshot's keys, offset 3
    checkpoint = _Checkpoint({0: 3})
    metrics = _metrics()
    with caplog.at_level(logging.WARNING):
        source = _assign_partition_0(learner, checkpoint, _state_of_horizon_3(offset=9), metrics)
    (skipped,) = [r for r in caplog.records if r.getMessage() == "internal record skipped"]
    assert skipped.reason == "shape" and "expected" in skipped.detail  # 3 horizon steps, not 1
    labels = {"topic": "state", "reason": "shape"}
    assert metrics.registry.get_sample_value("lstmd_internal_records_rejected_total", labels) == 1
    # Nothing of the other state, nor of the older local one: the group's committed offset
    # (ahead of the local 3, whose records were answered already) is where it resumes.
    assert len(learner.stores.get(0, ())) == 0 and learner.pending_events() == 0
    assert 0 not in checkpoint.processed and source.seeks == {}


def test_a_fitting_state_ahead_of_the_local_one_is_restored() -> None:
    learner = _learner(horizon=3)
    checkpoint = _Checkpoint({})
    source = _assign_partition_0(learner, checkpoint, _state_of_horizon_3(offset=9))
    assert sorted(learner.stores[0].row_of) == ["x", "y"]
    assert checkpoint.adopted == [(0, 9, True)] and source.seeks == {0: 9}
