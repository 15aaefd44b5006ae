"""kafka_io and the embedded broker against a real Tansu process."""

from __future__ import annotations

import json
import socket
import time
import uuid
from contextlib import closing
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from daemon.edges.embedded import EmbeddedBroker
from daemon.edges.kafka_io import (
    EventSource,
    Publisher,
    RawMessage,
    client_options,
    ensure_topics,
    produce_values,
    read_all,
)
from daemon.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

POLL_MS = 200
# A group join against Tansu takes ~3 s; leave room for a slow CI machine.
CONSUME_TIMEOUT_S = 20.0


def _settings(topic: str, group: str | None = None) -> KafkaSettings:
    return KafkaSettings(input_topic=topic, group_id=group or f"g-{uuid.uuid4().hex[:8]}")


def _consume(source: EventSource, count: int) -> list[RawMessage]:
    got: list[RawMessage] = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while len(got) < count and time.monotonic() < deadline:
        got.extend(source.poll(POLL_MS))
    return got


def _publish(options: dict[str, Any], topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    publisher = Publisher(options, KafkaSettings())
    try:
        for key, value in pairs:
            publisher.send(topic, key, value, [("h", b"1")])
        assert publisher.flush(10) == 0
        assert publisher.delivered == len(pairs)
    finally:
        publisher.close(5)


def test_broker_start_stop_and_a_second_broker(broker: EmbeddedBroker) -> None:
    second = EmbeddedBroker()
    with pytest.raises(RuntimeError, match="not started"):
        _ = second.bootstrap
    with second:
        assert second.bootstrap != broker.bootstrap
        options = client_options(KafkaSettings(), second.bootstrap)
        ensure_topics(options, ["only-on-second"])
        _publish(options, "only-on-second", [(b"k", b"v")])
        assert [m.value for m in read_all(options, "only-on-second", idle_s=1)] == [b"v"]
        port = second.port
    second.stop()  # Idempotent.
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", port))  # The port is free again.


def test_taken_port_is_refused(broker: EmbeddedBroker) -> None:
    with pytest.raises(RuntimeError, match="already in use"):
        EmbeddedBroker(port=broker.port).start(timeout_s=5)


def test_ensure_topics_is_idempotent(kafka_options: dict[str, Any], topic_factory) -> None:
    topic = topic_factory(partitions=3)
    ensure_topics(kafka_options, [topic, topic], partitions=1)
    assert read_all(kafka_options, topic, idle_s=0.5) == []


def test_group_round_trip_commit_and_resume(kafka_options: dict[str, Any], topic_factory) -> None:
    topic = topic_factory()
    _publish(kafka_options, topic, [(b"k%d" % i, b"v%d" % i) for i in range(10)])
    settings = _settings(topic)
    assigned: list[set[tuple[str, int]]] = []

    first = EventSource(kafka_options, settings, on_assign=assigned.append)
    try:
        got = _consume(first, 10)
        assert [m.offset for m in got] == list(range(10))
        assert [m.value for m in got] == [b"v%d" % i for i in range(10)]
        assert got[0].key == b"k0" and got[0].headers == (("h", b"1"),)
        assert assigned == [{(topic, 0)}] and first.assignment() == {(topic, 0)}
        assert first.lag() == {(topic, 0): 0}
        first.commit({(topic, 0): 4})
    finally:
        first.close()

    second = EventSource(kafka_options, settings)
    try:
        resumed = _consume(second, 6)
        assert [m.offset for m in resumed] == [4, 5, 6, 7, 8, 9]
        assert second.lag() == {(topic, 0): 0}  # consumed to the end
    finally:
        second.close()


def test_lag_is_never_negative_and_counts_unread(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory()
    source = EventSource(kafka_options, _settings(topic))
    try:
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while not source.assignment() and time.monotonic() < deadline:
            assert source.poll(POLL_MS) == []
        assert source.lag() == {(topic, 0): 0}
        # One record per request: Tansu's end offset is exact only at batch boundaries.
        for i in range(3):
            _publish(kafka_options, topic, [(b"k", b"%d" % i)])
        assert source.lag() == {(topic, 0): 3}
        assert len(_consume(source, 3)) == 3
        assert source.lag() == {(topic, 0): 0}
    finally:
        source.close()


def test_dead_letter_carries_original_bytes_and_headers(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory("dlq")
    bad = RawMessage("events", 2, 41, b"key-1", b"\xff\x00not json", 1_700_000_000_123, ())
    empty = RawMessage("events", 0, 7, None, None, 5, ())
    detail = "é" * 600  # 1200 bytes of UTF-8: cut to 1000 on a character boundary.
    publisher = Publisher(kafka_options, KafkaSettings())
    publisher.send_dead_letter(topic, bad, "decode", detail)
    publisher.send_dead_letter(topic, empty, "empty", "no value")
    assert publisher.flush(10) == 0
    publisher.close(5)

    first, second = read_all(kafka_options, topic, idle_s=1)
    assert (first.key, first.value) == (b"key-1", b"\xff\x00not json")
    assert list(first.headers) == [
        ("lstmd-reason", b"decode"),
        ("lstmd-detail", ("é" * 500).encode("utf-8")),
        ("lstmd-source-topic", b"events"),
        ("lstmd-source-partition", b"2"),
        ("lstmd-source-offset", b"41"),
        ("lstmd-source-timestamp-ms", b"1700000000123"),
    ]
    assert (second.key, second.value) == (None, b"")
    assert dict(second.headers)["lstmd-detail"] == b"no value"


def test_produce_values_and_read_all(kafka_options: dict[str, Any], topic_factory) -> None:
    topic = topic_factory(partitions=3)
    progress: list[int] = []
    items = ((b"k%d" % (i % 7), b"%d" % i) for i in range(2500))
    assert produce_values(kafka_options, topic, items, on_progress=progress.append) == 2500
    assert progress == [1000, 2000]

    started = time.monotonic()
    records = read_all(kafka_options, topic, idle_s=5)
    assert time.monotonic() - started < 5  # Stopped at the end, not by going idle.
    assert len(records) == 2500
    for partition in range(3):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    assert sorted(int(r.value) for r in records) == list(range(2500))


def test_kcat_reads_what_publisher_wrote(kcat, kafka_options: dict[str, Any], broker) -> None:
    options = kafka_options
    kcat_bootstrap = broker.bootstrap
    ensure_topics(options, ["for-kcat"])
    raw = RawMessage("events", 0, 3, b"key-9", b'{"x": 1}', 1234, ())
    publisher = Publisher(options, KafkaSettings())
    publisher.send("for-kcat", b"plain-key", b"plain-value", [("a", b"b")])
    publisher.send_dead_letter("for-kcat", raw, "schema", "missing field y")
    assert publisher.flush(10) == 0
    publisher.close(5)

    out = kcat("-b", kcat_bootstrap, "-C", "-t", "for-kcat", "-e", "-q", "-J")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [(r["key"], r["payload"]) for r in rows] == [
        ("plain-key", "plain-value"),
        ("key-9", '{"x": 1}'),
    ]
    assert rows[0]["headers"] == ["a", "b"]
    assert rows[1]["headers"] == [
        "lstmd-reason", "schema",
        "lstmd-detail", "missing field y",
        "lstmd-source-topic", "events",
        "lstmd-source-partition", "0",
        "lstmd-source-offset", "3",
        "lstmd-source-timestamp-ms", "1234",
    ]  # fmt: skip


def test_a_broker_that_dies_reports_its_log(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'boom: no storage' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    with pytest.raises(RuntimeError, match=r"exited with code 3(.|\n)*boom: no storage"):
        EmbeddedBroker().start(timeout_s=5)


def test_a_record_the_producer_gives_up_on_is_sent_again_at_the_next_flush(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory("retry")
    publisher = Publisher(kafka_options, KafkaSettings())
    publisher._appender = None  # every record through KafkaProducer.send, which fails once
    real_send = publisher._producer.send
    calls = {"n": 0}

    def flaky_send(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KafkaTimeoutError("delivery timed out")  # as when the broker is gone too long
        return real_send(*args, **kwargs)

    publisher._producer.send = flaky_send
    publisher.send(topic, b"k", b"first")
    publisher.send(topic, b"k", b"second")
    assert publisher.flush(10) == 1  # one failed; it is queued again
    assert publisher.flush(10) == 0
    publisher.close(5)
    values = sorted(r.value for r in read_all(kafka_options, topic))
    assert values == [b"first", b"second"]


def test_predictions_take_the_direct_path_to_the_default_partitions_and_all_arrive(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    """Keyed records skip `KafkaProducer.send`: same partitions as its murmur2 default, each
    record once and in order per key, all counted."""
    from kafka.partitioner import murmur2

    topic = topic_factory("direct", partitions=3)
    publisher = Publisher(kafka_options, KafkaSettings())
    assert publisher._appender is not None  # kafka-python 3.0's internals are there
    direct = []
    original = publisher._append

    def counting_append(*args):
        future = original(*args)
        direct.append(future is not None)
        return future

    publisher._append = counting_append
    sent = [(f"key-{i % 40}".encode(), b'{"n": %d}' % i) for i in range(600)]
    for key, value in sent:
        publisher.send(topic, key, value)
    assert publisher.flush(30) == 0
    publisher.close(5)
    assert publisher.delivered == len(sent) and publisher.failed == 0
    assert sum(direct) >= len(sent) - 1  # the first may need send() to fetch the metadata
    got = read_all(kafka_options, topic)
    assert sorted((m.key, m.value) for m in got) == sorted(sent)
    for message in got:
        assert message.partition == (murmur2(message.key) & 0x7FFFFFFF) % 3
    assert len({m.partition for m in got}) == 3
    by_key: dict[bytes, list[int]] = {}
    for message in sorted(got, key=lambda m: (m.partition, m.offset)):
        by_key.setdefault(message.key, []).append(int(message.value[6:-1]))
    assert all(numbers == sorted(numbers) for numbers in by_key.values())  # order per key


def _wait_assigned(source: EventSource) -> None:
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while not source.assignment():
        assert time.monotonic() < deadline, "the early join got no assignment"
        time.sleep(0.05)


def test_early_join_holds_the_assignment_until_the_first_poll_after_attach(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory(partitions=3)
    produce_values(kafka_options, topic, [(b"k%d" % i, b"v%d" % i) for i in range(60)])
    source = EventSource(kafka_options, _settings(topic))
    assigned: list[set[tuple[str, int]]] = []

    def on_assign(partitions: set[tuple[str, int]]) -> None:
        assigned.append(set(partitions))
        source.seek((topic, 1), 2)  # honoured: nothing of the held partitions was consumed

    try:
        source.join_early()
        _wait_assigned(source)
        with pytest.raises(RuntimeError, match="attach"):
            source.poll(0)
        time.sleep(1.0)  # room for fetches, were the held partitions not paused
        source.attach(on_assign=on_assign)
        assert assigned == []  # handed over by the next poll, like a join inside it
        got = _consume(source, 58)
        time.sleep(0.5)
        got += source.poll(POLL_MS)
    finally:
        source.close()
    assert assigned == [{(topic, p) for p in range(3)}]
    offsets: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for message in got:
        offsets[message.partition].append(message.offset)
    assert len(got) == 58
    for partition, seen in offsets.items():
        first = 2 if partition == 1 else 0
        assert seen == list(range(first, first + len(seen))), partition


def test_close_during_the_early_join_leaves_the_group_to_the_next_member(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory(partitions=2)
    produce_values(kafka_options, topic, [(b"k%d" % i, b"v%d" % i) for i in range(20)])
    settings = _settings(topic)
    first = EventSource(kafka_options, settings)
    first.join_early()
    _wait_assigned(first)
    first.close()  # never attached: nothing consumed, nothing committed
    second = EventSource(kafka_options, settings)
    try:
        got = _consume(second, 20)
    finally:
        second.close()
    assert sorted((m.partition, m.offset) for m in got) == sorted(
        {(m.partition, m.offset) for m in got}
    )
    assert len(got) == 20


def test_topics_are_created_with_the_replication_factor_asked_for(kafka_options) -> None:
    # Tansu keeps one copy whatever it is asked, but reports the replicas it was asked for: the
    # setting reaches CreateTopics (-1 asks for the broker's default, which is 1 there).
    from kafka import KafkaAdminClient

    from daemon.edges.state_topic import ensure_state_topic
    from daemon.edges.weights_topic import ensure_weights_topic

    tag = uuid.uuid4().hex[:8]
    ensure_topics(kafka_options, [f"rf3-{tag}"], partitions=2, replication_factor=3)
    ensure_state_topic(kafka_options, f"rf3-state-{tag}", 2, replication_factor=3)
    ensure_weights_topic(kafka_options, f"rf3-weights-{tag}", replication_factor=3)
    ensure_topics(kafka_options, [f"rf-default-{tag}"])
    admin = KafkaAdminClient(**kafka_options)
    try:
        described = {
            d["name"]: {len(p["replica_nodes"]) for p in d["partitions"]}
            for d in admin.describe_topics(
                [f"rf3-{tag}", f"rf3-state-{tag}", f"rf3-weights-{tag}", f"rf-default-{tag}"]
            )
        }
    finally:
        admin.close()
    assert described == {
        f"rf3-{tag}": {3},
        f"rf3-state-{tag}": {3},
        f"rf3-weights-{tag}": {3},
        f"rf-default-{tag}": {1},
    }


def test_an_offset_past_the_partitions_end_is_unreachable_one_inside_its_last_batch_is_not(
    kafka_options, topic_factory
) -> None:
    # Tansu's end offset may stop at the last batch's first record + 1: an offset inside that
    # batch must still count as reached (a restored state's legitimate offset), 10**12 not.
    topic = topic_factory("reach", partitions=1)
    produce_values(kafka_options, topic, [(b"k", b"v%d" % i) for i in range(10)])
    settings = KafkaSettings(input_topic=topic, group_id=f"g-{uuid.uuid4().hex[:8]}")
    source = EventSource(kafka_options, settings)
    try:
        assert [source.offset_reachable(0, o) for o in (0, 5, 9, 10)] == [True] * 4
        assert not source.offset_reachable(0, 11)
        assert not source.offset_reachable(0, 10**12)
    finally:
        source.close()
