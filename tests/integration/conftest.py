"""Fixtures for tests that talk to a real (embedded Tansu) broker."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.edges.embedded import EmbeddedBroker
from daemon.edges.kafka_io import client_options, ensure_topics
from daemon.settings import KafkaSettings

TopicFactory = Callable[..., str]


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the whole session; tests isolate by topic and group names."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def kafka_options(broker: EmbeddedBroker) -> dict[str, Any]:
    """Client options for the session broker."""
    return client_options(KafkaSettings(), broker.bootstrap)


@pytest.fixture
def topic_factory(kafka_options: dict[str, Any]) -> TopicFactory:
    """Return `make(prefix="t", partitions=1)`, which creates a uniquely named topic."""

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_options, [name], partitions=partitions)
        return name

    return make


@pytest.fixture(scope="session")
def kcat(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess]:
    """Return `run(*args)`, which runs Debian's kcat against librdkafka 2.x and checks it.

    Debian 12's kcat links librdkafka 2.0.2, which misreads the tagged fields Tansu puts in its
    ApiVersions reply ("Read underflow"; fixed in librdkafka 2.2, confluentinc/librdkafka#4278).
    The confluent-kafka wheel (a dev dependency) ships a newer librdkafka; kcat loads it through
    LD_LIBRARY_PATH, and then talks to the broker directly.
    """
    binary = shutil.which("kcat")
    if binary is None:
        pytest.fail("kcat is not installed: apt-get install kcat")
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    bundled = sorted(libs.glob("librdkafka*.so*"))
    assert bundled, f"no librdkafka in {libs}"
    lib_dir = tmp_path_factory.mktemp("librdkafka")
    (lib_dir / "librdkafka.so.1").symlink_to(bundled[0])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [binary, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"LD_LIBRARY_PATH": str(lib_dir), "PATH": "/usr/bin:/bin"},
        )

    return run
