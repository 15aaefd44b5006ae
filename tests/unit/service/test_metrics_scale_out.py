"""The scale-out metrics: partitions owned, restores, state-topic lag, weight sync, rebalances."""

import pytest
from prometheus_client import CollectorRegistry

from daemon.service.metrics import DaemonMetrics


@pytest.fixture
def metrics():
    return DaemonMetrics(CollectorRegistry())


def _value(m, name, **labels):
    return m.registry.get_sample_value(name, labels)


def test_scale_out_metrics_record_under_their_names(metrics):
    metrics.owned_partitions.set(2)
    metrics.rebalances.inc()
    metrics.partition_restore_duration.observe(0.9)
    metrics.partition_restore_duration.observe(12.0)
    metrics.weight_sync_last.set(1_700_000_000)
    metrics.live_replicas.set(3)
    metrics.weights_divergence.set(0.125)
    assert _value(metrics, "lstmd_owned_partitions") == 2
    assert _value(metrics, "lstmd_rebalances_total") == 1
    assert _value(metrics, "lstmd_partition_restore_duration_seconds_bucket", le="1.0") == 1
    assert _value(metrics, "lstmd_partition_restore_duration_seconds_count") == 2
    assert _value(metrics, "lstmd_weight_sync_last_timestamp_seconds") == 1_700_000_000
    assert _value(metrics, "lstmd_live_replicas") == 3
    assert _value(metrics, "lstmd_weights_divergence") == 0.125


def test_weight_sync_starts_at_never(metrics):
    assert _value(metrics, "lstmd_weight_sync_last_timestamp_seconds") == 0
    assert _value(metrics, "lstmd_rebalances_total") == 0


def test_state_topic_lag_is_clamped_and_forgets_partitions_that_moved(metrics):
    metrics.set_state_topic_lag({0: 40, 3: -1})
    assert _value(metrics, "lstmd_state_topic_lag_records", partition="0") == 40
    assert _value(metrics, "lstmd_state_topic_lag_records", partition="3") == 0
    metrics.set_state_topic_lag({3: 7})
    assert _value(metrics, "lstmd_state_topic_lag_records", partition="0") is None
    assert _value(metrics, "lstmd_state_topic_lag_records", partition="3") == 7
