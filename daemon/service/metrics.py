"""Prometheus metrics: the only module that defines them.

Metrics never open sockets; `daemon.edges.http` serves them. Every metric takes the registry it
is given, so tests build a fresh `CollectorRegistry()` and read values with
`registry.get_sample_value(...)`. No label ever carries a stream key (cardinality stays bounded):
the only labels are a rejection or reset reason (closed enums), a model name, an input partition
number, an interval level (from the settings), and the constant build and model info.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)

from daemon import __version__
from daemon.core.events import Reason
from daemon.core.store import ResetReason
from daemon.service.poll_histogram import PollHistogram
from daemon.settings import ModelSettings

# Train steps take milliseconds on CPU; seconds means trouble.
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Forecasts publish within a poll; supervised predictions wait up to max_batch_wait_ms or longer.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A snapshot writes weights, optimiser and every key's state: from milliseconds for a few keys
# to tens of seconds for 100k stored keys on a slow disk.
_SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Rows per train step: powers of two up to the largest batch sizes in use; a step that fills
# few rows of B says keys rarely hold trainable events together.
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Restoring a partition's key states from the state topic: ~1 s for 100k keys measured
# (bench/state_restore.py), more on a real cluster or with a large uncompacted topic.
_RESTORE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

MODEL_LABELS = ("lstmd", "naive")

_log = logging.getLogger("lstmd.trust")


class DaemonMetrics:
    """Every metric the daemon exports, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # ---- input: what came in and what was turned away ----------------------------------
        self.events_consumed = Counter(
            "lstmd_events_consumed", "Input messages consumed.", registry=r
        )
        self.events_rejected = Counter(
            "lstmd_events_rejected",
            "Input messages dead-lettered, by reason.",
            ["reason"],
            registry=r,
        )
        # Every reason is exported from the start at 0, so rate() sees the first rejection.
        for reason in Reason:
            self.events_rejected.labels(reason=reason.value)
        self.consumer_lag = Gauge(
            "lstmd_consumer_lag",
            "Messages between the consumer position and the end of the log, per input partition.",
            ["partition"],
            registry=r,
        )
        self._lag_partitions: set[str] = set()

        # ---- learning: train steps and how good the model is -------------------------------
        self.train_steps = Counter("lstmd_train_steps", "Train steps run.", registry=r)
        self.loss = Gauge(
            "lstmd_loss", "Loss of the last train step (normalised units).", registry=r
        )
        self.loss.set(float("nan"))  # no step yet: 0 would read as a perfect model
        self.nonfinite_losses = Counter(
            "lstmd_nonfinite_losses",
            "Train steps whose loss was NaN or infinite.",
            registry=r,
        )
        self.step_duration = Histogram(
            "lstmd_train_step_duration_seconds",
            "Wall time of one compiled train step.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.prequential_mae = Gauge(
            "lstmd_prequential_mae",
            "Prequential mean absolute error over the last scored target values, "
            "by model (lstmd or the naive baseline), in target units.",
            ["model"],
            registry=r,
        )
        for model in MODEL_LABELS:
            # NaN until the first event is scored: no error yet is not an error of 0.
            self.prequential_mae.labels(model=model).set(float("nan"))
        self.interval_coverage = Gauge(
            "lstmd_interval_coverage",
            "Share of the last scored target values inside their published interval, by "
            "interval level (intervals.levels).",
            ["level"],
            registry=r,
        )
        self.interval_score = Gauge(
            "lstmd_interval_score",
            "Mean interval (Winkler) score of the last scored target values, by interval level, "
            "in target units: width plus 2/(1 - level) times each miss's distance.",
            ["level"],
            registry=r,
        )

        # ---- output: predictions and how long they took ------------------------------------
        self.predictions_published = Counter(
            "lstmd_predictions_published", "Prediction messages sent.", registry=r
        )
        self.predictions_failed = Counter(
            "lstmd_predictions_failed", "Prediction messages the broker did not accept.", registry=r
        )
        self.dead_letters_failed = Counter(
            "lstmd_dead_letters_failed",
            "Dead-letter messages the broker did not accept.",
            registry=r,
        )
        self.records_undeliverable = Counter(
            "lstmd_records_undeliverable",
            "Records dropped without retry because the broker can never accept them "
            "(too large, unknown topic, not authorised, other non-retriable errors), "
            "by topic and reason.",
            ["topic", "reason"],
            registry=r,
        )
        # One observation per prediction: fed a poll's worth at a time.
        self.latency = PollHistogram(
            "lstmd_event_to_prediction_seconds",
            "From an event's arrival at the daemon to its prediction being queued for sending.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        # ---- key state: the stores, batches, resets ------------------------------------------
        self.resets = Counter(
            "lstmd_state_resets", "Key states set to zero, by reason.", ["reason"], registry=r
        )
        for reset_reason in ResetReason:
            self.resets.labels(reason=reset_reason.value)
        self.keys_in_store = Gauge(
            "lstmd_keys_in_store",
            "Keys held by the key-state stores of all owned partitions.",
            registry=r,
        )
        self.pending_events = Gauge(
            "lstmd_pending_events",
            "Accepted events not yet trained on, in all stores.",
            registry=r,
        )
        self.batch_rows = Histogram(
            "lstmd_batch_rows",
            "Keys (rows) filled per train step, out of model.batch_size.",
            buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.inference_calls = Counter(
            "lstmd_inference_calls", "Batched forecast inference calls.", registry=r
        )

        # ---- snapshots ---------------------------------------------------------------------
        self.snapshot_duration = Histogram(
            "lstmd_snapshot_duration_seconds",
            "Wall time of writing one snapshot.",
            buckets=_SNAPSHOT_BUCKETS,
            registry=r,
        )
        self.snapshot_last_success = Gauge(
            "lstmd_snapshot_last_success_timestamp_seconds",
            "Unix time of the last snapshot written completely; 0 before the first.",
            registry=r,
        )
        self.snapshot_failures = Counter(
            "lstmd_snapshot_failures", "Snapshots that could not be written.", registry=r
        )
        self.snapshot_fallbacks = Counter(
            "lstmd_snapshot_fallbacks",
            "Restores that skipped an unreadable newest snapshot for an older one.",
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "lstmd_dead_letters_truncated",
            "Dead-letter payloads cut to kafka.dead_letter_max_bytes.",
            registry=r,
        )
        self.broker_connected = Gauge(
            "lstmd_broker_connected",
            "1 while a connection to the Kafka cluster is up, 0 during an outage.",
            registry=r,
        )
        self.broker_connected.set(1)
        self.commit_failures = Counter(
            "lstmd_commit_failures",
            "Offset commits that failed (retried at the next snapshot, when idle and at exit).",
            registry=r,
        )
        self.diverged_batches_skipped = Counter(
            "lstmd_diverged_batches_skipped",
            "Non-finite train steps skipped (not rolled back) because training diverged again "
            "right after a rollback; their events are answered and counted untrained.",
            registry=r,
        )
        self.offsets_missing = Counter(
            "lstmd_input_offsets_missing",
            "Assignments where the input offset the state reflects was gone from the broker "
            "(deleted by retention, or the topic recreated), by input partition.",
            ["partition"],
            registry=r,
        )
        self.topic_changed = Counter(
            "lstmd_input_topic_changed",
            "Assignments where the input topic's id differs from the one the state was built on.",
            registry=r,
        )
        self.rollbacks = Counter(
            "lstmd_rollbacks",
            "Roll-backs to the last good snapshot after consecutive non-finite train steps.",
            registry=r,
        )

        # ---- scale-out: partitions, their states, one logical model ------------------------
        self.owned_partitions = Gauge(
            "lstmd_owned_partitions", "Input partitions this replica owns now.", registry=r
        )
        self.rebalances = Counter(
            "lstmd_rebalances",
            "Consumer-group rebalances this replica took part in (after its first join).",
            registry=r,
        )
        self.partition_restore_duration = Histogram(
            "lstmd_partition_restore_duration_seconds",
            "Time to restore one assigned partition's key states from the state topic.",
            buckets=_RESTORE_BUCKETS,
            registry=r,
        )
        self.state_topic_lag = Gauge(
            "lstmd_state_topic_lag_records",
            "Input records processed since the partition's last durable state write: what a "
            "new owner would process again if the partition moved now.",
            ["partition"],
            registry=r,
        )
        self._state_lag_partitions: set[str] = set()
        self.weight_sync_last = Gauge(
            "lstmd_weight_sync_last_timestamp_seconds",
            "Unix time this replica last adopted the replicas' averaged weights (0: never).",
            registry=r,
        )
        self.live_replicas = Gauge(
            "lstmd_live_replicas",
            "Replicas whose weights counted in the last average (published within 3 sync periods).",
            registry=r,
        )
        self.internal_records_rejected = Counter(
            "lstmd_internal_records_rejected",
            "Records of lstmd's own state and weights topics skipped because they failed "
            "validation, by topic (state, weights) and reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.weights_divergence = Gauge(
            "lstmd_weights_divergence",
            "L2 norm of this replica's weights minus the average, just before adopting it.",
            registry=r,
        )

        # ---- liveness ----------------------------------------------------------------------
        self.loop_last_progress = Gauge(
            "lstmd_loop_last_progress_timestamp_seconds",
            "Unix time of the last loop turn that made progress or found nothing to consume.",
            registry=r,
        )
        # Start-up counts as progress, so a daemon still joining its group is not called stalled.
        self.loop_last_progress.set_to_current_time()

        # ---- identity: what is running -----------------------------------------------------
        self.build = Info("lstmd_build", "Version of the running daemon.", registry=r)
        self.build.info({"version": __version__})
        self.model_info = Info(
            "lstmd_model", "Shape of the model being trained (constant per run).", registry=r
        )
        # process_start_time_seconds and resident memory: the key stores grow with the key count,
        # and the snapshot-age alert needs the start time. Standard names, hence no lstmd_ prefix.
        ProcessCollector(registry=r)

    def set_model_info(self, model: ModelSettings) -> None:
        """Export the model's shape as `lstmd_model_info` labels."""
        self.model_info.info(
            {
                "units": str(model.units),
                "layers": str(model.layers),
                "batch_size": str(model.batch_size),
                "window": str(model.window),
                "n_features": str(model.n_features),
                "horizon": str(model.horizon),
            }
        )

    def reject_internal(self, topic: str, reason: str, detail: str) -> None:
        """Count and log one internal-topic record skipped (DESIGN §11: untrusted input)."""
        self.internal_records_rejected.labels(topic=topic, reason=reason).inc()
        _log.warning(
            "internal record skipped", extra={"topic": topic, "reason": reason, "detail": detail}
        )

    def set_consumer_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Set the lag of each assigned (topic, partition), clamped at 0, and drop the others."""
        current = {str(partition) for _, partition in lag}
        # A revoked partition's gauge would otherwise report its last lag forever.
        for label in self._lag_partitions - current:
            self.consumer_lag.remove(label)
        self._lag_partitions = current
        for (_, partition), messages in lag.items():
            # End offsets and positions are read at different moments; a lag below 0 is a race.
            self.consumer_lag.labels(partition=str(partition)).set(max(0, messages))

    def set_state_topic_lag(self, lag: Mapping[int, int]) -> None:
        """Set, per owned input partition, the records processed since its last state write."""
        current = {str(partition) for partition in lag}
        for label in self._state_lag_partitions - current:
            self.state_topic_lag.remove(label)  # a partition that moved away
        self._state_lag_partitions = current
        for partition, records in lag.items():
            self.state_topic_lag.labels(partition=str(partition)).set(max(0, records))
