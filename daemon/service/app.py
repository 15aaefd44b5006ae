"""Wiring: build the broker connection, the model, the learner and the runner from settings."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.learner import OnlineLearner
from daemon.edges.embedded import EmbeddedBroker
from daemon.edges.http import EndpointServer
from daemon.edges.kafka_io import (
    EventSource,
    ProcessPublisher,
    Publisher,
    client_options,
    ensure_topics,
    partition_count,
)
from daemon.edges.state_topic import StateTopic, ensure_state_topic
from daemon.edges.weights_topic import WeightsTopic, ensure_weights_topic, template_of
from daemon.model.environment import configure_tensorflow
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.lock import DirectoryLock, DirectoryLocked
from daemon.persist.snapshots import FormatMismatch, ShapeMismatch, SnapshotStore
from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.runner import Runner
from daemon.service.weight_sync import WeightSync, replica_id
from daemon.settings import Settings

log = logging.getLogger("lstmd.app")


class StartupError(Exception):
    """The daemon cannot start as configured; the message is one line that says why."""


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
    if settings.kafka.group_instance_id:
        # Measured (tests/integration/test_rebalance.py): Tansu 0.6.0 evicts a restarted static
        # member when its old session expires and then never finishes the rebalance.
        raise StartupError(
            "invalid setting kafka.group_instance_id: the embedded broker (Tansu) does not "
            "support static membership; unset it or set kafka.bootstrap_servers"
        )
    port = settings.kafka.embedded_port if embedded_port is None else embedded_port
    with EmbeddedBroker(port=port) as broker:
        log.info("embedded broker started", extra={"bootstrap": broker.bootstrap})
        yield client_options(settings.kafka, broker.bootstrap)


@dataclass
class Daemon:
    """A built daemon: the runner and what must be closed with it."""

    runner: Runner
    learner: OnlineLearner
    metrics: DaemonMetrics
    model: Any
    endpoints: EndpointServer | None
    lock: DirectoryLock | None = None
    # Kafka clients of the state and weights topics, closed with the daemon.
    channels: tuple[Any, ...] = ()

    def close(self) -> None:
        gc.unfreeze()  # what start-up froze may be garbage once this daemon is gone
        if self.endpoints is not None:
            self.endpoints.close()
        for channel in self.channels:
            with contextlib.suppress(Exception):  # leaving anyway; the broker may be gone
                channel.close()
        if self.lock is not None:
            self.lock.release()


def restore_state(
    settings: Settings, checkpointer: Checkpointer, metrics: DaemonMetrics
) -> dict[int, int]:
    """Load the newest valid snapshot; return the offsets it reflects ({} when none).

    Raises:
        StartupError: snapshots exist but none is valid (and `snapshot.start_fresh` is off), or
            the newest valid one was made with other model-shape settings.
    """
    directory = settings.snapshot.directory
    try:
        info, skipped = checkpointer.restore()
    except ShapeMismatch as exc:
        raise StartupError(f"{exc}; move {directory} away or restore the settings") from None
    except FormatMismatch as exc:
        raise StartupError(f"{exc}; move {directory} away to start from zero state") from None
    if info is None:
        if skipped and not settings.snapshot.start_fresh:
            newest_id, problem = skipped[0]
            raise StartupError(
                f"no valid snapshot in {directory}: {len(skipped)} damaged, newest {newest_id}: "
                f"{problem}; set snapshot.start_fresh=true to start from zero"
            )
        log.info("no snapshot; starting from zero state", extra={"directory": str(directory)})
        return {}
    if skipped:
        metrics.snapshot_fallbacks.inc()
        log.warning(
            "fell back to an older snapshot",
            extra={"snapshot": info.snapshot_id, "skipped": [sid for sid, _ in skipped]},
        )
    log.info(
        "snapshot restored",
        extra={"snapshot": info.snapshot_id, "step": info.step, "offsets": info.offsets},
    )
    return dict(info.offsets)


def check_snapshot_directory(directory: Path) -> None:
    """Make sure snapshots can be written before anything else starts.

    Raises:
        StartupError: one line naming `snapshot.directory` and why it cannot be used.
    """
    probe = directory / ".lstmd-write-probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"invalid setting snapshot.directory: {directory} is not writable: "
            f"{exc.strerror or exc}"
        ) from None


def lock_snapshot_directory(directory: Path) -> DirectoryLock:
    """Take the snapshot directory for this process alone (DESIGN.md §6).

    Raises:
        StartupError: another live process holds it; the line names that process.
    """
    lock = DirectoryLock(directory)
    try:
        lock.acquire()
    except DirectoryLocked as exc:
        raise StartupError(str(exc)) from None
    log.info("snapshot directory locked", extra={"lock": str(lock.path)})
    return lock


def build_daemon(settings: Settings, options: dict, serve_http: bool = True) -> Daemon:
    """Create topics, restore the newest snapshot, and build the Kafka clients and the runner.

    The consumer group is joined while the rest is built (`EventSource.join_early`); the
    runner's first poll restores what the join assigned.

    The returned daemon holds the snapshot directory's lock until `Daemon.close`.
    """
    check_snapshot_directory(settings.snapshot.directory)
    lock = lock_snapshot_directory(settings.snapshot.directory)
    try:
        daemon = _build(settings, options, serve_http, lock)
    except BaseException:
        lock.release()
        raise
    _freeze_what_lives_for_good()
    return daemon


def _freeze_what_lives_for_good() -> None:
    """Keep the garbage collector's full passes off what start-up built for the whole run.

    TensorFlow's modules, the traced graphs and the model are ~450,000 tracked objects. Every
    full collection walked them again, found nothing to free, and took ~0.24 s: on the demo,
    one every ~1.7 s, 13% of the loop thread. Collected first, so only live objects are frozen;
    `Daemon.close` unfreezes them.
    """
    gc.collect()
    gc.freeze()


def _build(settings: Settings, options: dict, serve_http: bool, lock: DirectoryLock) -> Daemon:
    ensure_topics(options, topics(settings), replication_factor=settings.kafka.replication_factor)
    # The group join waits seconds at the coordinator: spend them loading TensorFlow.
    source = EventSource(options, settings.kafka)
    source.join_early()
    try:
        return _build_while_joining(settings, options, serve_http, lock, source)
    except BaseException:
        source.close()
        raise


def _build_while_joining(
    settings: Settings, options: dict, serve_http: bool, lock: DirectoryLock, source: EventSource
) -> Daemon:
    configure_tensorflow()
    from daemon.model.lstm import build_model  # TensorFlow loads only when a daemon is built

    model = build_model(settings)
    model.warm_up()
    learner = OnlineLearner(settings, model)
    snapshot = settings.snapshot
    store = SnapshotStore(snapshot.directory, snapshot.keep, snapshot.pause_before_rename_s)
    checkpointer = Checkpointer(store, learner, model, settings.model)
    metrics = DaemonMetrics()
    metrics.set_model_info(settings.model)
    health = Health(settings.health.stall_s, time.monotonic())
    # First of what holds resources: a port in use stops start-up before any client or child
    # process exists (before, it leaked the publishing process and left with a traceback).
    endpoints = _serve_endpoints(settings, metrics, health) if serve_http else None
    opened: list[Any] = [] if endpoints is None else [endpoints]
    try:
        return _build_clients(
            settings,
            options,
            lock,
            source,
            model,
            learner,
            checkpointer,
            metrics,
            health,
            endpoints,
            opened,
        )
    except BaseException:
        for resource in reversed(opened):
            with contextlib.suppress(Exception):
                resource.close()
        raise


def _serve_endpoints(settings: Settings, metrics: DaemonMetrics, health: Health) -> EndpointServer:
    try:
        endpoints = EndpointServer(
            settings.metrics.host,
            settings.metrics.port,
            metrics.registry,
            health=lambda: health.liveness(time.monotonic()),
            ready=health.readiness,
        )
    except OSError as exc:
        raise StartupError(
            f"invalid setting metrics.port: cannot serve on "
            f"{settings.metrics.host}:{settings.metrics.port}: {exc.strerror or exc}"
        ) from None
    log.info("http endpoints serving", extra={"port": endpoints.port})
    return endpoints


def _build_clients(
    settings: Settings,
    options: dict,
    lock: DirectoryLock,
    source: EventSource,
    model: Any,
    learner: OnlineLearner,
    checkpointer: Checkpointer,
    metrics: DaemonMetrics,
    health: Health,
    endpoints: EndpointServer | None,
    opened: list[Any],
) -> Daemon:
    """Restore, then make the Kafka clients and the runner; `opened` collects what to close."""
    restored = restore_state(settings, checkpointer, metrics)
    health.set_restored(True)
    kafka = settings.kafka
    ensure_state_topic(
        options,
        kafka.state_topic,
        partition_count(options, kafka.input_topic),
        kafka.replication_factor,
    )
    # States belong to a consumer group (two groups reading one topic each keep their own), as
    # Kafka Streams names changelogs after the application id.
    state_topic = StateTopic(
        options,
        kafka.state_topic,
        f"{kafka.group_id}/{kafka.input_topic}",
        rejected=functools.partial(metrics.reject_internal, "state"),
    )
    opened.append(state_topic)
    weights = _weight_sync(settings, options, model, learner, metrics, checkpointer)
    if weights is not None:
        opened.append(weights.channel)
    publisher: Publisher | ProcessPublisher = (
        ProcessPublisher(options, kafka) if kafka.publisher_process else Publisher(options, kafka)
    )
    opened.append(publisher)
    runner = Runner(
        settings,
        source,
        publisher,
        learner,
        metrics,
        checkpointer,
        health,
        restored,
        state_topic=state_topic,
        weights=weights,
    )
    source.attach(
        on_assign=lambda partitions: _assigned(partitions, source, metrics, runner),
        on_revoke=runner.moves.on_revoke,
        on_lost=runner.moves.on_lost,
    )
    # The runner closes the publisher as it leaves; a daemon never run must not leak it (its
    # child process, when `kafka.publisher_process`).
    channels = (publisher, state_topic) + (() if weights is None else (weights.channel,))
    return Daemon(runner, learner, metrics, model, endpoints, lock, channels)


def _assigned(partitions: set, source: EventSource, metrics: DaemonMetrics, runner: Runner) -> None:
    log.info("partitions assigned", extra={"partitions": sorted(p for _, p in partitions)})
    if source.rebalances:
        metrics.rebalances.inc()
    runner.moves.on_assign(partitions)


def _weight_sync(
    settings: Settings,
    options: dict,
    model: Any,
    learner: OnlineLearner,
    metrics: DaemonMetrics,
    checkpointer: Checkpointer,
) -> WeightSync | None:
    """Join the replicas' averaged model (DESIGN.md §10); None when `model.sync_every_s` is 0."""
    every_s = settings.model.sync_every_s
    if not every_s:
        return None
    kafka = settings.kafka
    ensure_weights_topic(options, kafka.weights_topic, kafka.replication_factor)
    # Keyed by group, too: only replicas of this group are averaged.
    name = f"{kafka.group_id}/{replica_id(kafka.group_instance_id)}"
    channel = WeightsTopic(
        options,
        kafka.weights_topic,
        name,
        template_of(model.get_weights()),
        functools.partial(metrics.reject_internal, "weights"),
    )
    sync = WeightSync(channel, model, learner, metrics, every_s, scope=f"{kafka.group_id}/")
    sync.version = int(checkpointer.extra.get("weights_version", 0))
    sync.join()
    return sync


def install_signal_handlers(runner: Runner) -> None:
    """Make SIGTERM and SIGINT finish the current poll, snapshot, commit and exit 0."""

    def stop(signum: int, _frame: object) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        runner.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# sysexits.h EX_SOFTWARE: the daemon stopped on an internal failure, not on bad input or config.
EXIT_INTERNAL_FAILURE = 70


def run_daemon(settings: Settings) -> int:
    """Run `lstmd run` until a signal; return the exit code.

    Returns:
        0 after a graceful stop (snapshot and commit done); `EXIT_INTERNAL_FAILURE` when the loop
        failed and left without snapshot or commit (the runner has logged why).
    """
    with kafka_connection(settings) as options:
        daemon = build_daemon(settings, options)
        install_signal_handlers(daemon.runner)
        try:
            daemon.runner.run()
        except Exception:  # logged by the runner, with its traceback, as it left
            return EXIT_INTERNAL_FAILURE
        finally:
            daemon.close()
    return 0
