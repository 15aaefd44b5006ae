"""Records as read from Kafka, before any decoding: what the rest of lstmd sees of a message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One record as read from Kafka, before any decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]


def raw_message(record: Any) -> RawMessage:
    """Return a kafka-python `ConsumerRecord` as a `RawMessage`."""
    return RawMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        timestamp_ms=record.timestamp,
        # A null header value is legal on the wire; downstream wants bytes.
        headers=tuple((name, value or b"") for name, value in record.headers or ()),
    )
