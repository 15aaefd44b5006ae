"""The loop's vital signs: broker connection, liveness beat, consumer lag, progress summary.

Each is reported when it changes or on its own interval, never once per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.ports import Source

log = logging.getLogger("lstmd.runner")

# Consumer lag asks the broker for end offsets; a few seconds is fresh enough for a gauge.
LAG_INTERVAL_S = 5.0
# Progress summary at INFO: one line this often, never one per message.
SUMMARY_INTERVAL_S = 60.0

PartitionKey = tuple[str, int]


class Vitals:
    """Follow the connection, beat the liveness clock, refresh the lags, log a summary.

    Args:
        source: the consumer (connection and lag).
        health: liveness and readiness.
        metrics: `DaemonMetrics`.
        state_lag: per owned partition, records processed since its state reached Kafka.
        summary: the fields of the periodic progress line.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        source: Source,
        health: Health,
        metrics: DaemonMetrics,
        state_lag: Callable[[], Mapping[int, int]],
        summary: Callable[[], dict[str, Any]],
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self._health = health
        self._metrics = metrics
        self._state_lag = state_lag
        self._summary = summary
        self._clock = clock
        self.connected = True
        self.lag: dict[PartitionKey, int] = {}
        self._last_lag = self._last_summary = clock()

    def check_connection(self, received: bool) -> None:
        """Follow the broker connection; log and report only when it changes."""
        connected = received or self._source.connected()
        if connected == self.connected:
            return
        self.connected = connected
        self._health.set_connected(connected)
        self._metrics.broker_connected.set(1 if connected else 0)
        if connected:
            log.info("broker connection restored")
        else:
            log.warning("broker connection lost; reconnecting with backoff")

    def after_turn(self, progress: bool, idle: bool) -> None:
        """Beat the liveness clock; refresh lags and log the summary when due."""
        now = self._clock()
        self._health.set_assigned(bool(self._source.assignment()))
        # Nothing came and nothing is due: in forecast mode a key's newest event waits for its
        # successor forever on a quiet stream, so "buffers empty" would never hold.
        if self._health.beat(now, progress, idle=idle):
            self._metrics.loop_last_progress.set_to_current_time()
        if self.connected and now - self._last_lag >= LAG_INTERVAL_S:
            self._update_lag(now)
        if now - self._last_summary >= SUMMARY_INTERVAL_S:
            self._last_summary = now
            log.info("progress", extra={**self._summary(), "lag": sum(self.lag.values())})

    def _update_lag(self, now: float) -> None:
        self._last_lag = now
        try:
            self.lag = self._source.lag()
        except TimeoutError:
            return  # the broker is unreachable; the connection check reports that
        self._metrics.set_consumer_lag(self.lag)
        self._metrics.set_state_topic_lag(self._state_lag())
