"""Start-up refuses settings the embedded broker cannot honour."""

from __future__ import annotations

import pytest

from daemon.service.app import StartupError, kafka_connection
from daemon.settings import KafkaSettings, Settings


def test_static_membership_with_the_embedded_broker_is_refused_before_it_starts() -> None:
    settings = Settings(kafka=KafkaSettings(group_instance_id="pod-0"))
    refused = pytest.raises(StartupError, match=r"kafka\.group_instance_id.*embedded broker")
    with refused, kafka_connection(settings):
        pytest.fail("the embedded broker must not start")


def test_static_membership_with_a_cluster_passes_through() -> None:
    settings = Settings(kafka=KafkaSettings(group_instance_id="pod-0", bootstrap_servers="k:9092"))
    with kafka_connection(settings) as options:
        assert options["bootstrap_servers"] == ["k:9092"]
