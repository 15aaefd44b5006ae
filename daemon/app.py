"""Wiring: build the broker connection, the model, the learner and the runner from settings."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from daemon.embedded import EmbeddedBroker
from daemon.endpoints import EndpointServer
from daemon.engine import OnlineLearner
from daemon.kafka_io import EventSource, Publisher, client_options, ensure_topics
from daemon.metrics import DaemonMetrics
from daemon.runner import Runner
from daemon.settings import Settings

log = logging.getLogger("lstmd.app")

# A loop that has not turned for this long is reported unhealthy on /healthz.
HEALTH_STALL_S = 60.0


def topics(settings: Settings) -> list[str]:
    """Return every topic the daemon reads or writes."""
    k = settings.kafka
    return [k.input_topic, k.predictions_topic, k.dead_letter_topic, k.metrics_topic]


@contextlib.contextmanager
def kafka_connection(settings: Settings, embedded_port: int | None = None) -> Iterator[dict]:
    """Yield client options for the configured cluster, or for an embedded broker we start.

    Args:
        settings: the frozen settings.
        embedded_port: overrides `kafka.embedded_port` (the demo passes 0 for a free port).
    """
    if settings.kafka.bootstrap_servers:
        yield client_options(settings.kafka, settings.kafka.bootstrap_servers)
        return
    port = settings.kafka.embedded_port if embedded_port is None else embedded_port
    with EmbeddedBroker(port=port) as broker:
        log.info("embedded broker started", extra={"bootstrap": broker.bootstrap})
        yield client_options(settings.kafka, broker.bootstrap)


def configure_tensorflow() -> None:
    """Set TensorFlow's process options; they only count before TensorFlow is first imported.

    oneDNN's fused CPU kernels reorder floating-point sums between runs, which would break
    "a restarted run ends with the same weights", and announce themselves on stderr.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Daemon:
    """A built daemon: the runner and what must be closed with it."""

    runner: Runner
    learner: OnlineLearner
    metrics: DaemonMetrics
    model: Any
    endpoints: EndpointServer | None

    def close(self) -> None:
        if self.endpoints is not None:
            self.endpoints.close()


def build_daemon(settings: Settings, options: dict, serve_http: bool = True) -> Daemon:
    """Create topics, the model, the learner, the Kafka clients and the runner."""
    configure_tensorflow()
    from daemon.model import StatefulLSTM  # TensorFlow loads only when a daemon is built

    ensure_topics(options, topics(settings))
    model = StatefulLSTM(settings.model)
    learner = OnlineLearner(settings, model)
    metrics = DaemonMetrics()
    holder: dict[str, Runner] = {}

    def on_assign(partitions: set) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(p for _, p in partitions)})

    def on_revoke(partitions: set) -> None:
        if not partitions:
            return  # the first join revokes nothing
        log.info("partitions revoked", extra={"partitions": sorted(p for _, p in partitions)})
        if "runner" in holder:
            holder["runner"].commit()

    source = EventSource(options, settings.kafka, on_assign=on_assign, on_revoke=on_revoke)
    publisher = Publisher(options, settings.kafka)
    runner = Runner(settings, source, publisher, learner, metrics)
    holder["runner"] = runner
    endpoints = None
    if serve_http:
        endpoints = EndpointServer(
            settings.metrics.host,
            settings.metrics.port,
            metrics.registry,
            health=lambda: runner.health(HEALTH_STALL_S),
            ready=lambda: (runner.ready, "no partitions assigned"),
        )
        log.info("http endpoints serving", extra={"port": endpoints.port})
    return Daemon(runner, learner, metrics, model, endpoints)


def install_signal_handlers(runner: Runner) -> None:
    """Make SIGTERM and SIGINT finish the current poll, drain, commit and exit 0."""

    def stop(signum: int, _frame: object) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        runner.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def run_daemon(settings: Settings) -> int:
    """Run `lstmd run` until a signal; return the exit code."""
    with kafka_connection(settings) as options:
        daemon = build_daemon(settings, options)
        install_signal_handlers(daemon.runner)
        try:
            daemon.runner.run()
        finally:
            daemon.close()
    return 0
