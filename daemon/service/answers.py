"""Answers: predictions, dead letters and metrics messages handed to the producer, with counts.

Every accepted or rejected input record is answered here, once per delivery attempt: a
prediction on the predictions topic, or a dead letter naming why. Records that can never be sent
(too large, unencodable) turn into dead letters of their source event instead of stopping the
loop.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from daemon.core.events import Reason, Rejection
from daemon.core.learner import OnlineLearner
from daemon.core.records import Prediction, encode_metrics, encode_prediction
from daemon.service.learning_metrics import LearningRecorder
from daemon.service.metrics import DaemonMetrics
from daemon.settings import Settings

log = logging.getLogger("lstmd.runner")

# Room a record needs beyond its key and value inside one produce request: the record batch
# header (61 B), the record's own varints and attributes (< 25 B) and slack for the topic name.
RECORD_OVERHEAD_BYTES = 512


class Sink(Protocol):
    """The producer (`daemon.edges.publisher.Publisher`, or `daemon.edges.publisher_process`'s
    `ProcessPublisher`, which queues records until `push`)."""

    @property
    def truncated(self) -> int: ...
    @property
    def failed_by_topic(self) -> Counter[str]: ...

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None: ...
    def send_dead_letter(self, topic: str, raw: Any, reason: str, detail: str) -> None: ...
    def push(self) -> None: ...
    def flush(self, timeout_s: float) -> int: ...
    def close(self, timeout_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """Where an answer comes from, for a dead letter made after the input record is gone."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    timestamp_ms: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()


def internal_error(raw: Any, exc: Exception) -> Rejection:
    """A bug met while handling one event outside a train step: answer it and carry on."""
    name = type(exc).__name__
    log.error(
        "internal error handling an event; dead-lettered, the loop carries on",
        exc_info=exc,
        extra={"partition": raw.partition, "offset": raw.offset, "error": name},
    )
    return Rejection(Reason.INTERNAL_ERROR, f"{name}: {exc}")


class Answers:
    """Send the learner's predictions and the loop's dead letters; count both."""

    def __init__(
        self,
        settings: Settings,
        publisher: Sink,
        learner: OnlineLearner,
        metrics: DaemonMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._publisher = publisher
        self._learner = learner
        self._metrics = metrics
        self._clock = clock
        self._recorder = LearningRecorder(metrics, learner)
        self._seen_undeliverable: Counter[tuple[str, str]] = Counter()
        self._last_metrics_step = 0
        self.dead_lettered = 0
        self.predictions_sent = 0
        self.rejected: Counter[str] = Counter()

    def dead_letter(self, raw: Any, rejection: Rejection) -> None:
        """Send one input record to the dead-letter topic with the reason it was refused."""
        self.dead_lettered += 1
        self.rejected[rejection.reason] += 1
        self._metrics.events_rejected.labels(reason=rejection.reason).inc()
        truncated = self._publisher.truncated
        self._publisher.send_dead_letter(
            self._kafka.dead_letter_topic, raw, rejection.reason, rejection.detail
        )
        if self._publisher.truncated > truncated:
            self._metrics.dead_letters_truncated.inc()
        log.debug(
            "event dead-lettered",
            extra={
                "reason": str(rejection.reason),
                "partition": raw.partition,
                "offset": raw.offset,
            },
        )

    def publish(self, consumed: int, lag: int) -> None:
        """Send every prediction the learner queued, then the learning metrics when due."""
        predictions = self._learner.take_outbox()
        now = self._clock()
        sent = 0
        for prediction in predictions:
            sent += self._send_prediction(prediction)
        if predictions:
            received = np.fromiter((p.received_at for p in predictions), np.float64)
            self._metrics.latency.observe_many(np.maximum(0.0, now - received))
        self.predictions_sent += sent
        self._metrics.predictions_published.inc(sent)
        self._count_undeliverable()
        self._recorder.record()
        every = self._settings.metrics.every_steps
        if self._learner.step // every > self._last_metrics_step // every:
            self._last_metrics_step = self._learner.step
            self._send_metrics_message(consumed, lag)
        # Once per poll: the poll's predictions and dead letters leave together.
        self._publisher.push()

    def resync(self) -> None:
        """Take a rolled-back learner's counters as seen: Prometheus counters never go back."""
        self._recorder.resync()
        self._last_metrics_step = self._learner.step

    def _count_undeliverable(self) -> None:
        """Mirror the publisher's dropped-record counts (by topic and reason) into metrics."""
        dropped = getattr(self._publisher, "undeliverable", None) or {}
        for (topic, reason), count in dropped.items():
            seen = self._seen_undeliverable[(topic, reason)]
            if count > seen:
                self._metrics.records_undeliverable.labels(topic=topic, reason=reason).inc(
                    count - seen
                )
                self._seen_undeliverable[(topic, reason)] = count

    def _send_prediction(self, prediction: Prediction) -> int:
        """Send one prediction, or dead-letter its source event if it can never be sent."""
        kafka = self._kafka
        try:
            key = prediction.key.encode("utf-8")
            value = encode_prediction(prediction, kafka.input_topic)
        except Exception as exc:  # a bug in encoding one record must not stop every commit
            source = SourceRecord(kafka.input_topic, prediction.partition, prediction.offset)
            self.dead_letter(source, internal_error(source, exc))
            return 0
        size = len(key) + len(value) + RECORD_OVERHEAD_BYTES
        if size > kafka.max_request_size:
            limit = kafka.max_request_size
            detail = f"prediction record of {size} bytes exceeds kafka.max_request_size={limit}"
            source = SourceRecord(kafka.input_topic, prediction.partition, prediction.offset)
            self.dead_letter(source, Rejection(Reason.PREDICTION_TOO_LARGE, detail))
            return 0
        self._publisher.send(kafka.predictions_topic, key, value)
        return 1

    def _send_metrics_message(self, consumed: int, lag: int) -> None:
        learner = self._learner
        fields = {
            "step": learner.step,
            "loss": learner.last_loss,
            "prequential_mae": learner.prequential.model_mae,
            "naive_mae": learner.prequential.naive_mae,
            "events": consumed,
            "dead_lettered": self.dead_lettered,
            "keys": learner.keys_in_store(),
            "rows_filled": learner.rows_filled,
            "resets": dict(learner.resets),
            "lag": lag,
            "trained_events": learner.trained_events,
            "time": time.time(),
        }
        scores = learner.interval_scores
        if scores.levels:
            # Since start, as prequential_mae; keyed by level ("0.8").
            fields["interval_coverage"] = {f"{k:g}": v for k, v in scores.coverage().items()}
            fields["interval_score"] = {f"{k:g}": v for k, v in scores.interval_score().items()}
        if learner.horizon > 1:
            # Errors grow with the step ahead: one figure over all steps would hide which.
            fields["prequential_mae_per_step"] = learner.prequential.step_maes()
            fields["naive_mae_per_step"] = learner.prequential.step_naive_maes()
        self._publisher.send(self._kafka.metrics_topic, None, encode_metrics(fields))
