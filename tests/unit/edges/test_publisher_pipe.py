"""The publishing process's pipe protocol, without a broker: record frames survive the trip
exactly and in order, every command gets one reply carrying its sequence number, and a child
whose parent vanished closes its producer (delivering what it holds)."""

from __future__ import annotations

import io
import json
from collections import Counter

from daemon.edges.publisher_process import (
    _COMMAND,
    _LENGTH,
    REPLY_GRACE_S,
    _serve,
    decode_records,
    encode_records,
)


class _Recorder:
    """Stands in for the child's `Publisher`: records sends, flushes and closes."""

    def __init__(self, flush_times_out: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.calls: list[tuple[str, float]] = []
        self.flush_times_out = flush_times_out
        self.delivered = 0
        self.failed = 0
        self.failed_by_topic: Counter[str] = Counter()
        self.undeliverable: Counter[tuple[str, str]] = Counter({("t", "too_large"): 2})

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout_s: float) -> int:
        self.calls.append(("flush", timeout_s))
        if self.flush_times_out:
            raise TimeoutError("slow")
        self.delivered = len(self.sent)
        return 0

    def close(self, timeout_s: float) -> None:
        self.calls.append(("close", timeout_s))


def _frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


def _replies(data: bytes) -> list[dict]:
    stream, out = io.BytesIO(data), []
    while head := stream.read(_LENGTH.size):
        out.append(json.loads(stream.read(_LENGTH.unpack(head)[0])))
    return out


def test_records_round_trip_exactly_with_empty_and_binary_parts() -> None:
    keys = [b"a", b"", "ключ".encode(), bytes(range(256))]
    values = [b"", b"x" * 70_000, b"\x00\xff", b"{}"]
    assert decode_records(encode_records("прогноз", keys, values)) == ("прогноз", keys, values)


def test_the_child_sends_in_order_and_answers_each_command_with_its_sequence() -> None:
    first = encode_records("p", [b"k1", b"k2"], [b"v1", b"v2"])
    second = encode_records("q", [b"k3"], [b"v3"])
    commands = io.BytesIO(
        _frame(first)
        + _frame(_COMMAND.pack(b"F", 7, 2.5))
        + _frame(second)
        + _frame(_COMMAND.pack(b"C", 8, 4.0))
        + _frame(encode_records("p", [b"late"], [b"never"]))  # after close: not read
    )
    replies = io.BytesIO()
    publisher = _Recorder()
    _serve(publisher, commands, replies)  # type: ignore[arg-type]
    assert publisher.sent == [("p", b"k1", b"v1"), ("p", b"k2", b"v2"), ("q", b"k3", b"v3")]
    assert publisher.calls == [("flush", 2.5), ("close", 4.0)]
    flushed, closed = _replies(replies.getvalue())
    assert (flushed["sequence"], flushed["timeout"], flushed["delivered"]) == (7, False, 2)
    assert flushed["undeliverable"] == [["t", "too_large", 2]]
    assert closed["sequence"] == 8


def test_a_flush_that_times_out_says_so_in_its_reply() -> None:
    commands = io.BytesIO(_frame(_COMMAND.pack(b"F", 3, 0.1)))
    replies = io.BytesIO()
    publisher = _Recorder(flush_times_out=True)
    _serve(publisher, commands, replies)  # type: ignore[arg-type]
    [reply] = _replies(replies.getvalue())
    assert reply["sequence"] == 3 and reply["timeout"] is True


def test_end_of_input_without_close_closes_the_producer_and_delivers() -> None:
    body = encode_records("p", [b"k"], [b"v"])
    commands = io.BytesIO(_frame(body) + _frame(body)[:5])  # the parent died mid-frame
    publisher = _Recorder()
    _serve(publisher, commands, io.BytesIO())  # type: ignore[arg-type]
    assert publisher.sent == [("p", b"k", b"v")]
    assert publisher.calls == [("close", REPLY_GRACE_S)]


def test_the_childs_settings_validate_under_sasl_and_carry_no_secret() -> None:
    # The shipped k8s and systemd settings: SASL_SSL with the publishing process on. The child
    # validates the settings it is sent; a dump without the password failed SASL's own check
    # there, so every deployment with SASL crash-looped at its first prediction.
    from daemon.edges.publisher_process import _set_up
    from daemon.settings import KafkaSettings

    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="lstmd",
        sasl_password="hunter2-secret",
        producer_linger_ms=7,
    )
    options = {"security_protocol": "SASL_SSL", "sasl_plain_password": "hunter2-secret"}
    set_up = _set_up(options, kafka)
    child = KafkaSettings.model_validate(set_up["kafka"])
    assert child.producer_linger_ms == 7
    assert "hunter2" not in json.dumps(set_up["kafka"])
