"""Weight sync with an in-memory weights topic: replicas adopt the sample-weighted average of
the live replicas, a joining replica starts from it, and a period of 0 never syncs."""

from __future__ import annotations

import time

import numpy as np

from daemon.core.averaging import ReplicaWeights
from daemon.service.metrics import DaemonMetrics
from daemon.service.weight_sync import WeightSync


class Channel:
    """One shared dict of the latest weights per replica, like the compacted topic."""

    def __init__(self, board: dict, replica_id: str) -> None:
        self.board, self.replica_id = board, replica_id

    def publish(self, sample_count, weights, version) -> float:
        now = time.time()
        self.board[self.replica_id] = ReplicaWeights(
            self.replica_id, sample_count, [w.copy() for w in weights], version, now
        )
        return now

    def latest(self) -> dict:
        return dict(self.board)


class Model:
    def __init__(self, value: float) -> None:
        self.weights = [np.full((2, 2), value, np.float32)]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights) -> None:
        self.weights = [w.copy() for w in weights]


class Learner:
    def __init__(self, trained: int) -> None:
        self.trained_events = trained


def _sync(board, name, value, trained, every_s, clock):
    model = Model(value)
    sync = WeightSync(
        Channel(board, name), model, Learner(trained), DaemonMetrics(), every_s, lambda: clock[0]
    )
    return sync, model


def test_replicas_adopt_the_sample_weighted_average_and_a_joiner_starts_from_it():
    board: dict = {}
    clock = [0.0]
    a, _ = _sync(board, "a", 1.0, 100, 5.0, clock)
    b, model_b = _sync(board, "b", 3.0, 300, 5.0, clock)
    clock[0] = 5.0
    a.maybe_sync()  # only a has published: its own weights
    b.maybe_sync()  # a (100 samples at 1.0) and b (300 at 3.0): 2.5
    np.testing.assert_allclose(model_b.weights[0], 2.5)
    assert a.version == b.version == 1  # the first averaged version
    c, model_c = _sync(board, "c", -7.0, 0, 5.0, clock)
    c.join()
    np.testing.assert_allclose(model_c.weights[0], 2.5)  # the live replicas' average


def test_a_period_of_zero_never_publishes():
    board: dict = {}
    clock = [0.0]
    a, _ = _sync(board, "a", 1.0, 10, 0.0, clock)
    clock[0] = 1e6
    a.maybe_sync()
    a.join()
    assert board == {} and a.version == 0


def test_replicas_of_another_group_are_not_averaged():
    board: dict = {}
    clock = [5.0]
    stranger = Channel(board, "other-group/x")
    stranger.publish(10**6, [np.full((2, 2), 100.0, np.float32)], 7)
    model = Model(1.0)
    sync = WeightSync(
        Channel(board, "g/a"),
        model,
        Learner(10),
        DaemonMetrics(),
        5.0,
        lambda: clock[0],
        scope="g/",
    )
    clock[0] = 10.0
    sync.maybe_sync()
    np.testing.assert_allclose(model.weights[0], 1.0)
