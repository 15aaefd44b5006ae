"""PollHistogram exposes what prometheus_client's own Histogram would, fed a poll at a time."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from daemon.service.poll_histogram import PollHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.5, 1.0, 30.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text a scrape gets, without `_created` and `_sum` (summed in another order)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line and "_sum " not in line]


def test_exposition_equals_prometheus_clients_histogram_for_the_same_values():
    rng = np.random.default_rng(7)
    # Values on every bound (a bound includes its value), below the first, past the last.
    polls = [
        np.array(BUCKETS),
        np.array([0.0, 1e-9, 30.0000001, 1e6]),
        rng.exponential(0.2, size=500),
        np.array([]),
    ]
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = PollHistogram("x_seconds", "help text", BUCKETS, ours_registry)
    theirs = Histogram("x_seconds", "help text", buckets=BUCKETS, registry=theirs_registry)
    for values in polls:
        ours.observe_many(values)
        for value in values:
            theirs.observe(float(value))
    ours.observe(0.02)
    theirs.observe(0.02)
    assert _exposition(ours_registry) == _exposition(theirs_registry)
    assert ours_registry.get_sample_value("x_seconds_count") == 511
    assert ours_registry.get_sample_value("x_seconds_sum") == pytest.approx(
        theirs_registry.get_sample_value("x_seconds_sum"), rel=1e-12
    )


def test_a_second_histogram_of_the_same_name_is_refused_by_the_registry():
    registry = CollectorRegistry()
    PollHistogram("x_seconds", "help", BUCKETS, registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PollHistogram("x_seconds", "help", BUCKETS, registry)


@pytest.mark.parametrize("buckets", [(1.0, 0.5), (0.1, 0.1), (0.1, float("inf"))])
def test_bounds_must_be_finite_and_increasing(buckets):
    with pytest.raises(ValueError, match="strictly increasing"):
        PollHistogram("x_seconds", "help", buckets, CollectorRegistry())
