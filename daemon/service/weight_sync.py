"""One logical model across replicas: publish weights, adopt the sample-weighted average.

Every `model.sync_every_s` seconds (0 = never), at a batch boundary, this replica publishes its
weights and its trained-event count to the weights topic, reads every replica's latest, and
adopts the sample-weighted average of the live ones (local SGD / federated averaging, DESIGN.md
§10). A replica that starts adopts the average first, so it joins as the others are. The
optimizer's moments stay local: they describe this replica's gradients, not the average's.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from daemon.core.averaging import ReplicaWeights, divergence, live, weighted_average
from daemon.core.learner import OnlineLearner
from daemon.service.metrics import DaemonMetrics

log = logging.getLogger("lstmd.weights")

Weights = list[Any]
# After a failed sync (the weights topic unreachable or slow) the next try waits this long at
# least: each try may hold the loop for the topic's timeouts.
SYNC_RETRY_S = 30.0


class WeightsChannel(Protocol):
    """The weights topic (`daemon.edges.weights_topic.WeightsTopic`)."""

    replica_id: str

    def publish(self, sample_count: int, weights: Weights, version: int) -> float: ...
    def latest(self) -> dict[str, ReplicaWeights]: ...


class WeightModel(Protocol):
    def get_weights(self) -> Weights: ...
    def set_weights(self, weights: Weights) -> None: ...


def replica_id(group_instance_id: str | None) -> str:
    """Return this replica's key in the weights topic: the pod's name, else host and pid."""
    return group_instance_id or f"{socket.gethostname()}-{os.getpid()}"


class WeightSync:
    """Average weights with the other replicas every `every_s` seconds.

    Args:
        channel: the weights topic.
        model: the model whose weights are averaged.
        learner: supplies the sample count (`trained_events`).
        metrics: `DaemonMetrics`.
        every_s: the sync period; 0 never syncs.
        clock: monotonic seconds (the period); publication times are wall clock.
        scope: only replicas whose id starts with this are averaged (the consumer group).
    """

    def __init__(
        self,
        channel: WeightsChannel,
        model: WeightModel,
        learner: OnlineLearner,
        metrics: DaemonMetrics,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
        scope: str = "",
    ) -> None:
        self.channel = channel
        self._scope = scope
        self._model = model
        self._learner = learner
        self._metrics = metrics
        self._every_s = every_s
        self._clock = clock
        self.version = 0  # the averaged version the model holds (0: its own weights only)
        self._next = clock() + every_s

    def join(self) -> None:
        """At start-up: adopt the live replicas' average, if any replica is live.

        A weights topic that cannot be read now leaves this replica with its own weights; the
        next sync tries again.
        """
        if not self._every_s:
            return
        try:
            others = [r for r in self._live(time.time()) if r.replica_id != self.channel.replica_id]
        except (RuntimeError, TimeoutError) as exc:
            log.warning(
                "weights not joined; starting from this replica's own", extra={"error": str(exc)}
            )
            return
        if others:
            self._adopt(others, "joined")

    def maybe_sync(self) -> None:
        """Publish and average when a period has passed; a broker failure waits a period."""
        if not self._every_s or self._clock() < self._next:
            return
        self._next = self._clock() + self._every_s
        weights = self._model.get_weights()
        if not all(np.isfinite(w).all() for w in weights):
            log.warning("weight sync skipped: this replica's weights are not finite")
            return
        try:
            published = self.channel.publish(self._learner.trained_events, weights, self.version)
            replicas = self._live(published)
        except (RuntimeError, ValueError, TimeoutError) as exc:
            # The sync runs on the loop thread: a weights topic that keeps failing (or timing
            # out) must not take every turn of the loop.
            self._next = self._clock() + max(self._every_s, SYNC_RETRY_S)
            log.warning("weight sync skipped", extra={"error": str(exc)})
            return
        self._adopt(replicas, "synced")

    def _live(self, now: float) -> list[ReplicaWeights]:
        mine = [r for r in self.channel.latest().values() if r.replica_id.startswith(self._scope)]
        return live(mine, now, self._every_s)

    def _adopt(self, replicas: list[ReplicaWeights], event: str) -> None:
        average = weighted_average(
            [r.weights for r in replicas], [r.sample_count for r in replicas]
        )
        self._metrics.weights_divergence.set(divergence(self._model.get_weights(), average))
        self._model.set_weights(average)
        self.version = max(r.version for r in replicas) + 1
        self._metrics.weight_sync_last.set(time.time())
        self._metrics.live_replicas.set(len(replicas))
        # A join is worth a line; the periodic sync is not (it happens every few seconds).
        (log.info if event == "joined" else log.debug)(
            f"weights {event}",
            extra={
                "version": self.version,
                "replicas": sorted(r.replica_id for r in replicas),
                "samples": sum(r.sample_count for r in replicas),
            },
        )
