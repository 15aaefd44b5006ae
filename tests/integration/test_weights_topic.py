"""The weights topic on the real broker: every replica sees every replica's latest weights."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest

from daemon.core.averaging import weighted_average
from daemon.edges.weights_topic import WeightsTopic, ensure_weights_topic, template_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SYNC_EVERY_S = 1.0


def _weights(value: float) -> list[np.ndarray]:
    return [np.full((3, 4), value, dtype=np.float32), np.full(4, -value, dtype=np.float32)]


TEMPLATE = template_of(_weights(0.0))


def test_two_replicas_see_each_other_and_a_stale_replica_is_ignored(
    kafka_options: dict[str, Any],
) -> None:
    topic = f"weights-{uuid.uuid4().hex[:10]}"
    ensure_weights_topic(kafka_options, topic)
    stale = WeightsTopic(kafka_options, topic, "pod-2", TEMPLATE)
    a = WeightsTopic(kafka_options, topic, "pod-0", TEMPLATE)
    b = WeightsTopic(kafka_options, topic, "pod-1", TEMPLATE)
    try:
        stale.publish(1000, _weights(100.0), version=1)
        time.sleep(3 * SYNC_EVERY_S + 0.5)  # pod-2 stops publishing: no longer live
        a.publish(10, _weights(1.0), version=1)
        a.publish(30, _weights(2.0), version=2)  # only the latest of a replica counts
        b.publish(10, _weights(6.0), version=1)
        now = time.time()
        for reader in (a, b):
            assert set(reader.latest()) == {"pod-0", "pod-1", "pod-2"}
            replicas = sorted(reader.live(now, SYNC_EVERY_S), key=lambda r: r.replica_id)
            assert [(r.replica_id, r.version, r.sample_count) for r in replicas] == [
                ("pod-0", 2, 30),
                ("pod-1", 1, 10),
            ]
            average = weighted_average([r.weights for r in replicas], [30, 10])
            np.testing.assert_array_equal(average[0], np.full((3, 4), 3.0, dtype=np.float32))
            np.testing.assert_array_equal(average[1], np.full(4, -3.0, dtype=np.float32))
        # A replica that joins later starts from what is there.
        late = WeightsTopic(kafka_options, topic, "pod-3", TEMPLATE)
        try:
            assert {r.replica_id for r in late.live(time.time(), SYNC_EVERY_S)} == {
                "pod-0",
                "pod-1",
            }
        finally:
            late.close()
    finally:
        for replica in (stale, a, b):
            replica.close()
