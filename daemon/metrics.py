"""Prometheus metrics: the only module that defines them.

Metrics never open sockets; `daemon.endpoints` serves them. Every metric takes the registry it
is given, so tests build a fresh `CollectorRegistry()` and read values with
`registry.get_sample_value(...)`. No label ever carries a stream key (cardinality stays bounded).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from daemon import __version__

# Train steps take milliseconds on CPU; seconds means trouble.
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Forecasts publish within a poll; supervised predictions wait up to max_batch_wait_ms or longer.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DaemonMetrics:
    """Every metric the daemon exports, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "lstmd_events_consumed", "Input messages consumed.", registry=r
        )
        self.events_rejected = Counter(
            "lstmd_events_rejected",
            "Input messages dead-lettered, by reason.",
            ["reason"],
            registry=r,
        )
        self.train_steps = Counter("lstmd_train_steps", "Train steps run.", registry=r)
        self.loss = Gauge(
            "lstmd_loss", "Loss of the last train step (normalised units).", registry=r
        )
        self.step_duration = Histogram(
            "lstmd_train_step_duration_seconds",
            "Wall time of one compiled train step.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
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
        self.latency = Histogram(
            "lstmd_event_to_prediction_seconds",
            "From an event's arrival at the daemon to its prediction being queued for sending.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.resets = Counter(
            "lstmd_state_resets", "Key states set to zero, by reason.", ["reason"], registry=r
        )
        self.evictions = Counter(
            "lstmd_slot_evictions", "Keys moved out of a slot to the parked store.", registry=r
        )
        self.parked_keys = Gauge("lstmd_parked_keys", "Keys whose state is parked.", registry=r)
        self.active_slots = Gauge("lstmd_active_slots", "Slots bound to a key.", registry=r)
        self.consumer_lag = Gauge(
            "lstmd_consumer_lag",
            "Messages behind the end, per partition.",
            ["partition"],
            registry=r,
        )
        self.prequential_mae = Gauge(
            "lstmd_prequential_mae",
            "Prequential mean absolute error since start, by model (lstmd or naive).",
            ["model"],
            registry=r,
        )
        self.build = Info("lstmd_build", "Version of the running daemon.", registry=r)
        self.build.info({"version": __version__})
