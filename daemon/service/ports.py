"""The loop's ports: what the runner needs from the consumer, the state topic and weight sync.

The Kafka-backed implementations live in `daemon/edges/`; tests pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from daemon.persist.partition_state import PartitionState

PartitionKey = tuple[str, int]


class Source(Protocol):
    """The input consumer (`daemon.edges.kafka_io.EventSource`)."""

    def poll(self, timeout_ms: int) -> list[Any]: ...
    def commit(self, offsets: dict[PartitionKey, int]) -> Any: ...
    def assignment(self) -> set[PartitionKey]: ...
    def seek(self, partition: PartitionKey, offset: int) -> None: ...
    def lag(self) -> dict[PartitionKey, int]: ...
    def connected(self) -> bool: ...
    def close(self) -> None: ...


class StateStoreTopic(Protocol):
    """The state topic (`daemon.edges.state_topic.StateTopic`)."""

    def write(self, states: Mapping[int, PartitionState], timeout_s: float) -> None: ...
    def read(self, partitions: Iterable[int]) -> dict[int, PartitionState]: ...


class Syncer(Protocol):
    """Weight averaging across replicas (`daemon.service.weight_sync.WeightSync`)."""

    version: int

    def maybe_sync(self) -> None: ...
