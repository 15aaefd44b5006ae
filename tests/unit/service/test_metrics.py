"""DaemonMetrics on a fresh registry, and the dashboard and alerts referring only to its names."""

import json
import math
import re
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from daemon import __version__
from daemon.core.events import Reason
from daemon.core.store import ResetReason
from daemon.service.metrics import DaemonMetrics
from daemon.settings import ModelSettings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
# Sample names each metric type exposes beyond its family name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


@pytest.fixture
def metrics():
    return DaemonMetrics(CollectorRegistry())


def _value(m, name, **labels):
    return m.registry.get_sample_value(name, labels)


def defined_names() -> set[str]:
    """Return every series name a fresh DaemonMetrics can expose, samples or not yet."""
    names: set[str] = set()
    for family in DaemonMetrics(CollectorRegistry()).registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_counters_count_with_the_prometheus_names(metrics):
    metrics.events_consumed.inc(3)
    metrics.events_rejected.labels(reason="invalid_json").inc()
    metrics.train_steps.inc(2)
    metrics.nonfinite_losses.inc()
    metrics.predictions_published.inc(5)
    metrics.predictions_failed.inc()
    metrics.resets.labels(reason="event_flag").inc()
    metrics.inference_calls.inc(4)
    metrics.snapshot_failures.inc()
    metrics.snapshot_fallbacks.inc()
    assert _value(metrics, "lstmd_events_consumed_total") == 3
    assert _value(metrics, "lstmd_events_rejected_total", reason="invalid_json") == 1
    assert _value(metrics, "lstmd_train_steps_total") == 2
    assert _value(metrics, "lstmd_nonfinite_losses_total") == 1
    assert _value(metrics, "lstmd_predictions_published_total") == 5
    assert _value(metrics, "lstmd_predictions_failed_total") == 1
    assert _value(metrics, "lstmd_state_resets_total", reason="event_flag") == 1
    assert _value(metrics, "lstmd_inference_calls_total") == 4
    assert _value(metrics, "lstmd_snapshot_failures_total") == 1
    assert _value(metrics, "lstmd_snapshot_fallbacks_total") == 1


def test_every_reason_is_exported_at_zero_before_it_happens(metrics):
    for reason in Reason:
        assert _value(metrics, "lstmd_events_rejected_total", reason=reason.value) == 0
    for reason in ResetReason:
        assert _value(metrics, "lstmd_state_resets_total", reason=reason.value) == 0


def test_gauges_start_as_not_yet_known_rather_than_zero(metrics):
    assert math.isnan(_value(metrics, "lstmd_loss"))
    assert math.isnan(_value(metrics, "lstmd_prequential_mae", model="lstmd"))
    assert math.isnan(_value(metrics, "lstmd_prequential_mae", model="naive"))
    assert _value(metrics, "lstmd_snapshot_last_success_timestamp_seconds") == 0
    # Start-up counts as progress, so a fresh daemon is not reported stalled.
    assert _value(metrics, "lstmd_loop_last_progress_timestamp_seconds") == pytest.approx(
        time.time(), abs=60
    )


def test_gauges_and_histograms_record(metrics):
    metrics.loss.set(0.25)
    metrics.prequential_mae.labels(model="lstmd").set(1.5)
    metrics.keys_in_store.set(7)
    metrics.pending_events.set(3)
    metrics.batch_rows.observe(32)
    metrics.step_duration.observe(0.004)
    metrics.latency.observe(0.2)
    metrics.latency.observe(40.0)
    metrics.snapshot_duration.observe(1.2)
    metrics.snapshot_last_success.set(1_700_000_000)
    assert _value(metrics, "lstmd_loss") == 0.25
    assert _value(metrics, "lstmd_prequential_mae", model="lstmd") == 1.5
    assert _value(metrics, "lstmd_keys_in_store") == 7
    assert _value(metrics, "lstmd_pending_events") == 3
    assert _value(metrics, "lstmd_batch_rows_bucket", le="16.0") == 0
    assert _value(metrics, "lstmd_batch_rows_bucket", le="32.0") == 1
    assert _value(metrics, "lstmd_train_step_duration_seconds_bucket", le="0.005") == 1
    assert _value(metrics, "lstmd_event_to_prediction_seconds_count") == 2
    assert _value(metrics, "lstmd_event_to_prediction_seconds_bucket", le="30.0") == 1
    assert _value(metrics, "lstmd_snapshot_duration_seconds_sum") == pytest.approx(1.2)
    assert _value(metrics, "lstmd_snapshot_last_success_timestamp_seconds") == 1_700_000_000


def test_consumer_lag_is_clamped_at_zero_and_forgets_revoked_partitions(metrics):
    metrics.set_consumer_lag({("in", 0): 12, ("in", 1): -3})
    assert _value(metrics, "lstmd_consumer_lag", partition="0") == 12
    assert _value(metrics, "lstmd_consumer_lag", partition="1") == 0
    metrics.set_consumer_lag({("in", 1): 5})
    assert _value(metrics, "lstmd_consumer_lag", partition="0") is None
    assert _value(metrics, "lstmd_consumer_lag", partition="1") == 5


def test_build_and_model_info(metrics):
    assert _value(metrics, "lstmd_build_info", version=__version__) == 1
    metrics.set_model_info(
        ModelSettings(units=8, layers=2, batch_size=4, window=6, n_features=3, horizon=5)
    )
    labels = {"units": "8", "layers": "2", "batch_size": "4", "window": "6", "n_features": "3"}
    labels["horizon"] = "5"
    assert _value(metrics, "lstmd_model_info", **labels) == 1


def test_names_follow_prometheus_conventions_and_labels_stay_bounded():
    families = [
        f for f in DaemonMetrics(CollectorRegistry()).registry.collect() if f.name[:6] == "lstmd_"
    ]
    assert len(families) >= 24
    info = {"version", "units", "layers", "batch_size", "window", "n_features"}
    allowed_labels = {"reason", "model", "partition", "level", "le"} | info
    for family in families:
        assert re.fullmatch(r"lstmd_[a-z0-9_]+", family.name), family.name
        assert family.documentation, family.name
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name
        for sample in family.samples:
            assert set(sample.labels) <= allowed_labels, (family.name, sample.labels)
            assert "key" not in sample.labels


def test_each_instance_uses_only_its_own_registry():
    before = {f.name for f in REGISTRY.collect()}
    DaemonMetrics(CollectorRegistry())
    DaemonMetrics(CollectorRegistry())  # a second one must not collide with the first
    assert {f.name for f in REGISTRY.collect()} == before


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "lstmd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    return exprs


def _referenced(text: str) -> set[str]:
    # Label values and names never start with these prefixes, so this finds series names only.
    return set(re.findall(r"\b(?:lstmd|process)_[a-z0-9_]+\b", text))


def test_dashboard_panels_query_only_metrics_the_daemon_defines():
    dashboard = json.loads((DEPLOY / "grafana" / "lstmd-dashboard.json").read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["targets"] for p in panels)
    exprs = _dashboard_exprs()
    defined = defined_names()
    for expr in exprs:
        names = _referenced(expr)
        assert names, f"no lstmd metric in {expr!r}"
        assert names <= defined, f"undefined {names - defined} in {expr!r}"
    used = set().union(*map(_referenced, exprs))
    wanted = {
        "lstmd_events_consumed_total",
        "lstmd_predictions_published_total",
        "lstmd_loss",
        "lstmd_prequential_mae",
        "lstmd_event_to_prediction_seconds_bucket",
        "lstmd_consumer_lag",
        "lstmd_state_resets_total",
        "lstmd_keys_in_store",
        "lstmd_batch_rows_sum",
        "lstmd_events_rejected_total",
    }
    assert wanted <= used, wanted - used


def test_alert_rules_query_only_metrics_the_daemon_defines():
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    names = _referenced(exprs)
    assert "lstmd_prequential_mae" in names
    assert names <= defined_names(), names - defined_names()
