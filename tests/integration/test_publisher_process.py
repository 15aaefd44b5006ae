"""The predictions' producer in a child process, against a real Tansu broker: what it delivers,
what it counts, and what happens when either side of its pipe dies."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from daemon_helpers import daemon_settings

from daemon.edges.kafka_io import (
    ProcessPublisher,
    Publisher,
    PublisherGone,
    RawMessage,
    client_options,
    committed_offsets,
    produce_values,
    read_all,
)
from daemon.persist.lock import LOCK_FILE_NAME
from daemon.service.app import build_daemon
from daemon.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SMALL = KafkaSettings(max_request_size=8192, dead_letter_max_bytes=4096)


def test_records_land_keyed_and_partitioned_as_the_in_process_publisher_puts_them(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    through_child = topic_factory("child", partitions=3)
    in_process = topic_factory("inproc", partitions=3)
    side = topic_factory("side")
    pairs = [(f"key-{i % 37}".encode(), f"v{i}".encode()) for i in range(5000)]
    publisher = ProcessPublisher(kafka_options, KafkaSettings())
    reference = Publisher(kafka_options, KafkaSettings())
    try:
        for number, (key, value) in enumerate(pairs):
            publisher.send(through_child, key, value)
            reference.send(in_process, key, value)
            if number % 700 == 0:
                publisher.push()  # as the loop does once per poll
        publisher.send(side, None, b"metrics")  # no key: sent in process
        publisher.send_dead_letter(side, RawMessage("in", 0, 9, b"k", b"bad", 0, ()), "r", "d")
        assert publisher.flush(30) == 0 and reference.flush(30) == 0
        assert publisher.delivered == len(pairs) + 2
        assert publisher.failed == 0 and not publisher.failed_by_topic
    finally:
        publisher.close(10)
        reference.close(10)
    got = read_all(kafka_options, through_child)
    expected = read_all(kafka_options, in_process)
    assert sorted((r.partition, r.offset, r.key, r.value) for r in got) == sorted(
        (r.partition, r.offset, r.key, r.value) for r in expected
    )
    assert sorted(r.value for r in read_all(kafka_options, side)) == [b"bad", b"metrics"]


def test_undeliverable_records_are_counted_by_the_child_and_reported_at_flush(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory("child-undeliverable")
    publisher = ProcessPublisher(kafka_options, SMALL)
    try:
        for _ in range(3):
            publisher.send(topic, b"k", b"x" * 20_000)
        publisher.send(topic, b"k", b"fits")
        assert publisher.flush(30) == 0  # nothing a retry could deliver, nothing retried
        assert publisher.undeliverable[(topic, "too_large")] == 3
        assert publisher.delivered == 1
    finally:
        publisher.close(10)
    assert [r.value for r in read_all(kafka_options, topic)] == [b"fits"]


def test_a_child_that_died_stops_the_next_hand_over_and_close_still_returns(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory("child-dies")
    publisher = ProcessPublisher(kafka_options, KafkaSettings())
    publisher._process.kill()
    publisher._process.wait(10)
    publisher.send(topic, b"k", b"v")
    with pytest.raises(PublisherGone, match="exit status"):
        publisher.flush(5)
    publisher.close(1)  # logs, does not raise: the loop's abort path calls it


def test_a_child_whose_parent_vanished_delivers_what_it_holds_and_exits(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory("orphan")
    publisher = ProcessPublisher(kafka_options, KafkaSettings())
    try:
        for i in range(300):
            publisher.send(topic, b"k", str(i).encode())
        publisher.push()
        publisher._to_child.close()  # what a kill -9 of the daemon does to the pipe
        assert publisher._process.wait(30) == 0
    finally:
        publisher.close(1)  # the child is gone already: this releases the pipes
    assert [r.value for r in read_all(kafka_options, topic)] == [
        str(i).encode() for i in range(300)
    ]


def test_a_daemon_whose_publishing_process_died_stops_without_snapshot_or_commit(
    broker, tmp_path
) -> None:
    settings = daemon_settings(broker.bootstrap, tmp_path)
    options = client_options(settings.kafka, broker.bootstrap)
    events = [
        json.dumps({"key": f"k{d % 3}", "ts": 1_700_000_000 + 86_400 * d, "features": [d, 1.0]})
        for d in range(30)
    ]
    daemon = build_daemon(settings, options)
    try:
        publisher = daemon.runner._publisher
        assert isinstance(publisher, ProcessPublisher)  # the shipped default
        produce_values(options, settings.kafka.input_topic, [(None, e.encode()) for e in events])
        publisher._process.kill()
        publisher._process.wait(10)
        with pytest.raises(PublisherGone):
            daemon.runner.run(until=lambda runner: runner.consumed >= len(events))
        assert daemon.runner.consumed > 0  # it failed handing over a poll's predictions
    finally:
        daemon.close()
    assert committed_offsets(options, settings.kafka.group_id, settings.kafka.input_topic) == {}
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE_NAME]  # no snapshot written


def test_a_metrics_port_in_use_stops_start_up_in_one_line_and_leaves_no_child(
    broker, tmp_path
) -> None:
    import socket
    import subprocess as sp

    from daemon.service.app import StartupError
    from daemon.settings import MetricsSettings

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        settings = daemon_settings(
            broker.bootstrap, tmp_path, metrics=MetricsSettings(host="127.0.0.1", port=port)
        )
        options = client_options(settings.kafka, broker.bootstrap)
        with pytest.raises(StartupError, match=rf"^invalid setting metrics.port: .*:{port}: "):
            build_daemon(settings, options)
    finally:
        taken.close()
    children = sp.run(
        ["ps", "-o", "args=", "--ppid", str(os.getpid())], capture_output=True, text=True
    ).stdout
    assert "publisher_process" not in children
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE_NAME]  # no snapshot written
