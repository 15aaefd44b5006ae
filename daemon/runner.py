"""The daemon loop: poll → decode → learn → publish → commit, with its collaborators injected.

The runner owns no model logic and imports no client library: the event source, the publisher,
the learner and the metrics are handed in, so tests can drive it against the real broker or
against fakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from daemon.engine import OnlineLearner
from daemon.events import Event, Rejection, decode_event
from daemon.metrics import DaemonMetrics
from daemon.outputs import encode_metrics, encode_prediction
from daemon.settings import Settings

log = logging.getLogger("lstmd.runner")

# Offsets are committed at most this often (and at shutdown): each commit waits for the
# producer to acknowledge every prediction before it, which costs a round trip.
COMMIT_INTERVAL_S = 2.0
# Consumer lag asks the broker for end offsets; a few seconds is fresh enough for a gauge.
LAG_INTERVAL_S = 5.0
# A graceful stop waits this long for the broker to acknowledge what is in flight.
FLUSH_TIMEOUT_S = 30.0
# Progress summary at INFO: one line this often, never one per message.
SUMMARY_INTERVAL_S = 60.0

PartitionKey = tuple[str, int]


class Source(Protocol):
    def poll(self, timeout_ms: int) -> list[Any]: ...
    def commit(self, offsets: dict[PartitionKey, int]) -> None: ...
    def assignment(self) -> set[PartitionKey]: ...
    def lag(self) -> dict[PartitionKey, int]: ...
    def close(self) -> None: ...


class Sink(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None: ...
    def send_dead_letter(self, topic: str, raw: Any, reason: str, detail: str) -> None: ...
    def flush(self, timeout_s: float) -> int: ...
    def close(self, timeout_s: float) -> None: ...


class Runner:
    """Run the consume-learn-publish loop until asked to stop, then drain and commit."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        publisher: Sink,
        learner: OnlineLearner,
        metrics: DaemonMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._source = source
        self._publisher = publisher
        self._learner = learner
        self._metrics = metrics
        self._clock = clock
        self._stop = threading.Event()
        self._processed: dict[int, int] = {}  # input partition → next offset to read
        self._committed: dict[int, int] = {}
        self.consumed = 0
        self.dead_lettered = 0
        self.predictions_sent = 0
        self.rejected: Counter[str] = Counter()
        self._seen_steps = 0
        self._seen_resets: Counter[str] = Counter()
        self._seen_evictions = 0
        self._last_metrics_step = 0
        self._lag: dict[PartitionKey, int] = {}
        now = clock()
        self.heartbeat = now
        self._last_commit = self._last_lag = self._last_summary = now

    # ---- control ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to finish its current poll, drain and exit (signal-safe)."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        return bool(self._source.assignment())

    def health(self, stall_s: float) -> tuple[bool, str]:
        """Say whether the loop has turned within `stall_s` seconds."""
        idle = self._clock() - self.heartbeat
        if idle > stall_s:
            return False, f"loop stalled for {idle:.0f} s"
        return True, ""

    def run(
        self,
        until: Callable[[Runner], bool] | None = None,
        on_poll: Callable[[Runner], None] | None = None,
    ) -> None:
        """Loop until `request_stop()` or `until(self)` is true, then drain, flush and commit."""
        log.info("loop started", extra={"input_topic": self._kafka.input_topic})
        try:
            while not self._stop.is_set():
                self._poll_once()
                if on_poll is not None:
                    on_poll(self)
                if until is not None and until(self):
                    break
        finally:
            self._shutdown()

    # ---- one turn -----------------------------------------------------------------------

    def _poll_once(self) -> None:
        messages = self._source.poll(self._kafka.poll_timeout_ms)
        self.heartbeat = self._clock()
        for raw in messages:
            self._handle(raw)
        self._learner.end_of_poll()
        self._publish()
        now = self._clock()
        if now - self._last_commit >= COMMIT_INTERVAL_S:
            self.commit()
        if now - self._last_lag >= LAG_INTERVAL_S:
            self._update_lag()
        if now - self._last_summary >= SUMMARY_INTERVAL_S:
            self._log_summary()

    def _handle(self, raw: Any) -> None:
        self.consumed += 1
        self._metrics.events_consumed.inc()
        model = self._settings.model
        result: Event | Rejection | None = decode_event(
            raw.value,
            raw.key,
            model.n_features,
            model.n_targets,
            self._settings.stream.max_event_bytes,
        )
        if isinstance(result, Event):
            result = self._learner.ingest(result, raw.partition, raw.offset)
        if result is not None:
            self._dead_letter(raw, result)
        self._processed[raw.partition] = raw.offset + 1

    def _dead_letter(self, raw: Any, rejection: Rejection) -> None:
        self.dead_lettered += 1
        self.rejected[rejection.reason] += 1
        self._metrics.events_rejected.labels(reason=rejection.reason).inc()
        self._publisher.send_dead_letter(
            self._kafka.dead_letter_topic, raw, rejection.reason, rejection.detail
        )
        log.debug(
            "event dead-lettered",
            extra={
                "reason": str(rejection.reason),
                "partition": raw.partition,
                "offset": raw.offset,
            },
        )

    def _publish(self) -> None:
        predictions = self._learner.take_outbox()
        now = self._clock()
        topic = self._kafka.predictions_topic
        for prediction in predictions:
            value = encode_prediction(prediction, self._kafka.input_topic, snapshot_id=None)
            self._publisher.send(topic, prediction.key.encode("utf-8"), value)
            self._metrics.latency.observe(max(0.0, now - prediction.received_at))
        self.predictions_sent += len(predictions)
        self._metrics.predictions_published.inc(len(predictions))
        self._record_learning()

    def _record_learning(self) -> None:
        learner = self._learner
        for seconds in learner.step_seconds:
            self._metrics.step_duration.observe(seconds)
        learner.step_seconds.clear()
        if learner.step > self._seen_steps:
            self._metrics.train_steps.inc(learner.step - self._seen_steps)
            self._seen_steps = learner.step
            self._metrics.loss.set(learner.last_loss)
        for reason, count in learner.resets.items():
            if count > self._seen_resets[reason]:
                self._metrics.resets.labels(reason=reason).inc(count - self._seen_resets[reason])
                self._seen_resets[reason] = count
        table = learner.table
        self._metrics.evictions.inc(table.evictions - self._seen_evictions)
        self._seen_evictions = table.evictions
        self._metrics.parked_keys.set(len(table.parked))
        self._metrics.active_slots.set(len(table.slot_of))
        self._metrics.prequential_mae.labels(model="lstmd").set(learner.prequential.model_mae)
        self._metrics.prequential_mae.labels(model="naive").set(learner.prequential.naive_mae)
        every = self._settings.metrics.every_steps
        if learner.step // every > self._last_metrics_step // every:
            self._last_metrics_step = learner.step
            self._send_metrics_message()

    def _send_metrics_message(self) -> None:
        learner = self._learner
        fields = {
            "step": learner.step,
            "loss": learner.last_loss,
            "prequential_mae": learner.prequential.model_mae,
            "naive_mae": learner.prequential.naive_mae,
            "events": self.consumed,
            "dead_lettered": self.dead_lettered,
            "active_slots": len(learner.table.slot_of),
            "parked_keys": len(learner.table.parked),
            "resets": dict(learner.resets),
            "evictions": learner.table.evictions,
            "lag": sum(self._lag.values()),
            "time": time.time(),
        }
        self._publisher.send(self._kafka.metrics_topic, None, encode_metrics(fields))

    def commit(self) -> None:
        """Commit, per partition, the offsets before which every prediction is acknowledged."""
        self._last_commit = self._clock()
        failures = self._publisher.flush(FLUSH_TIMEOUT_S)
        if failures:
            self._metrics.predictions_failed.inc(failures)
            log.error("records not acknowledged; offsets not committed", extra={"failed": failures})
            return
        safe = self._learner.committable(self._processed)
        changed = {p: o for p, o in safe.items() if self._committed.get(p) != o}
        if changed:
            self._source.commit({(self._kafka.input_topic, p): o for p, o in changed.items()})
            self._committed.update(changed)

    def _update_lag(self) -> None:
        self._last_lag = self._clock()
        self._lag = self._source.lag()
        for (_, partition), lag in self._lag.items():
            self._metrics.consumer_lag.labels(partition=str(partition)).set(lag)

    def _log_summary(self) -> None:
        self._last_summary = self._clock()
        learner = self._learner
        log.info(
            "progress",
            extra={
                "events": self.consumed,
                "dead_lettered": self.dead_lettered,
                "predictions": self.predictions_sent,
                "steps": learner.step,
                "loss": round(learner.last_loss, 5),
                "mae": round(learner.prequential.model_mae, 4),
                "naive_mae": round(learner.prequential.naive_mae, 4),
                "lag": sum(self._lag.values()),
            },
        )

    def _shutdown(self) -> None:
        log.info("draining")
        self._learner.drain()
        self._publish()
        try:
            self.commit()
        finally:
            self._source.close()
            self._publisher.close(FLUSH_TIMEOUT_S)
        log.info(
            "stopped",
            extra={
                "events": self.consumed,
                "dead_lettered": self.dead_lettered,
                "predictions": self.predictions_sent,
                "steps": self._learner.step,
            },
        )
