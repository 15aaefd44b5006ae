"""Client errors of the internal topics are classified at the edge: kafka-python's
KafkaTimeoutError (not a RuntimeError) and every other KafkaError become the RuntimeError the
checkpoint and the weight sync back off on, instead of leaving the loop (exit 70)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from daemon.edges.state_topic import StateTopic
from daemon.edges.weights_topic import WeightsTopic
from daemon.persist.partition_state import PartitionState


class _Producer:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.flush_timeouts: list[float] = []

    def send(self, *args, **kwargs):
        return SimpleNamespace(add_errback=lambda _: None)

    def flush(self, timeout: float) -> None:
        self.flush_timeouts.append(timeout)
        raise self.error


def _state_topic(producer: _Producer) -> StateTopic:
    topic = StateTopic.__new__(StateTopic)
    topic._topic, topic._input, topic._chunk_bytes = "lstmd-state", "g/in", 1 << 19
    topic._producer, topic._partitions, topic._slots = producer, 1, {}
    return topic


@pytest.mark.parametrize("error", [KafkaTimeoutError("flush"), KafkaConnectionError()])
def test_a_state_topic_client_error_becomes_a_runtime_error_within_the_deadline(error) -> None:
    producer = _Producer(error)
    state = PartitionState(5, {"a": np.zeros(3)}, {"partition": 0})
    with pytest.raises(RuntimeError, match="offsets must not be committed"):
        _state_topic(producer).write({0: state}, timeout_s=2.0)
    assert producer.flush_timeouts and max(producer.flush_timeouts) <= 2.0


def test_a_weights_topic_timeout_becomes_a_runtime_error() -> None:
    def timing_out(*args, **kwargs):
        raise KafkaTimeoutError("ListOffsets")

    weights = WeightsTopic.__new__(WeightsTopic)
    weights._topic = "lstmd-weights"
    weights._consumer = SimpleNamespace(assignment=lambda: [], end_offsets=timing_out)
    with pytest.raises(RuntimeError, match="not read"):
        weights.latest()
