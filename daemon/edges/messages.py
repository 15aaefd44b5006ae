"""Records as read from Kafka, before any decoding: what the rest of lstmd sees of a message."""

from __future__ import annotations

from typing import Any, NamedTuple

PartitionKey = tuple[str, int]


class RawMessage(NamedTuple):
    """One record as read from Kafka, before any decoding.

    A NamedTuple, not a frozen dataclass: one is built per consumed record, and a tuple is built
    about 4x faster than a frozen dataclass sets its seven fields.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]


def raw_message(record: Any) -> RawMessage:
    """Return a kafka-python `ConsumerRecord` as a `RawMessage`."""
    headers = record.headers
    return RawMessage(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.timestamp,
        # A null header value is legal on the wire; downstream wants bytes.
        tuple((name, value or b"") for name, value in headers) if headers else (),
    )
