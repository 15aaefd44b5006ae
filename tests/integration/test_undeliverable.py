"""Records the broker can never accept are dropped and counted, not retried forever, and a dead
letter cut by the publisher always fits one request (issue 11)."""

from __future__ import annotations

from typing import Any

from daemon.edges.kafka_io import Publisher, RawMessage, read_all
from daemon.settings import KafkaSettings

SMALL = KafkaSettings(max_request_size=8192, dead_letter_max_bytes=4096)


def test_a_record_too_large_is_dropped_counted_and_does_not_block_the_flush(
    kafka_options: dict[str, Any], topic_factory, caplog
) -> None:
    topic = topic_factory("undeliverable")
    publisher = Publisher(kafka_options, SMALL)
    try:
        for _ in range(3):
            publisher.send(topic, b"k", b"x" * 20_000)
        publisher.send(topic, b"k", b"fits")
        assert publisher.flush(30) == 0  # nothing left that a retry could deliver
        assert publisher.flush(30) == 0  # and nothing is retried at the next flush either
        assert publisher.undeliverable[(topic, "too_large")] == 3
    finally:
        publisher.close(10)
    assert [r.value for r in read_all(kafka_options, topic)] == [b"fits"]
    drops = [r for r in caplog.records if r.getMessage().startswith("record can never")]
    assert len(drops) == 1  # once per streak, not once per record


def test_a_dead_letter_of_a_huge_record_with_a_huge_key_is_cut_to_fit(
    kafka_options: dict[str, Any], topic_factory
) -> None:
    topic = topic_factory("dlq-fit")
    raw = RawMessage("in", 0, 7, b"K" * 6000, b"V" * 50_000, 0, ())
    publisher = Publisher(kafka_options, SMALL)
    try:
        publisher.send_dead_letter(topic, raw, "too_large", "d" * 5000)
        assert publisher.flush(30) == 0
        assert not publisher.undeliverable
    finally:
        publisher.close(10)
    [record] = read_all(kafka_options, topic)
    headers = dict(record.headers)
    assert headers["lstmd-original-bytes"] == b"50000"
    assert headers["lstmd-original-key-bytes"] == b"6000"
    assert record.value == b"V" * len(record.value) and 0 < len(record.value) <= 4096
