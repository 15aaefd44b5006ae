"""In-memory stand-ins for the Kafka edges, so the runner's loop is tested without a broker.

`FakeSource` behaves like a one-partition topic with a consumer position (poll, seek, commit);
`FakePublisher` records what would be sent and can be told to fail deliveries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

TOPIC = "lstmd-events"


@dataclass(frozen=True)
class Raw:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: tuple = ()


class FakeSource:
    """One partition holding `values`; each poll returns up to `batch` messages."""

    def __init__(self, values: list[bytes | None], batch: int = 7) -> None:
        self.messages = [Raw(TOPIC, 0, i, None, v) for i, v in enumerate(values)]
        self.position = 0
        self.batch = batch
        self.commits: list[dict] = []
        self.seeks: list[tuple] = []
        self.closed = False
        self.up = True
        self.commit_failures = 0  # commits still to fail (one fewer each time)
        self.beginning = 0  # oldest offset the "broker" still has
        # kafka-python's close() fires the revoke callback with the whole assignment; a harness
        # wires this to the runner's `moves.on_revoke`, as the daemon's wiring does.
        self.on_revoke: Callable[[set[tuple[str, int]]], None] | None = None

    def append(self, values: list[bytes | None]) -> None:
        start = len(self.messages)
        self.messages += [Raw(TOPIC, 0, start + i, None, v) for i, v in enumerate(values)]

    def poll(self, timeout_ms: int) -> list[Raw]:
        out = self.messages[self.position : self.position + self.batch]
        self.position += len(out)
        return out

    def seek(self, partition: tuple[str, int], offset: int) -> None:
        self.seeks.append((partition, offset))
        self.position = offset

    def commit(self, offsets: dict) -> None:
        if self.commit_failures:
            self.commit_failures -= 1
            raise RuntimeError("CommitFailedError: the group is rebalancing")
        self.commits.append(dict(offsets))

    def beginning_offset(self, partition: int) -> int:
        return self.beginning

    def assignment(self) -> set[tuple[str, int]]:
        return {(TOPIC, 0)}

    def lag(self) -> dict:
        return {(TOPIC, 0): len(self.messages) - self.position}

    def connected(self) -> bool:
        return self.up

    def close(self) -> None:
        if self.on_revoke is not None and not self.closed:
            self.on_revoke(self.assignment())
        self.closed = True

    @property
    def drained(self) -> bool:
        return self.position >= len(self.messages)


@dataclass
class FakePublisher:
    """Record sends; fail every flush while `failing` is positive (one fewer each time)."""

    sent: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    dead: list[tuple[int, str, str]] = field(default_factory=list)
    failing: int = 0
    flushes: int = 0
    truncated: int = 0
    failed_by_topic: Counter = field(default_factory=Counter)

    def send(self, topic, key, value, headers=None) -> None:
        self.sent.append((topic, key, value))

    def send_dead_letter(self, topic, raw, reason, detail) -> None:
        self.dead.append((raw.offset, str(reason), detail))

    def push(self) -> None:
        pass

    def flush(self, timeout_s: float) -> int:
        self.flushes += 1
        if self.failing:
            self.failing -= 1
            self.failed_by_topic["lstmd-predictions"] += 1
            return 1
        return 0

    def close(self, timeout_s: float) -> None:
        pass

    def predictions(self, topic: str = "lstmd-predictions") -> list[bytes]:
        return [value for t, _, value in self.sent if t == topic]


class FakeStateTopic:
    """The state topic in memory: the newest state per partition; fails while `failing` > 0."""

    def __init__(self) -> None:
        self.states: dict = {}
        self.writes: list[dict[int, int]] = []  # per write: partition → offset
        self.failing = 0
        self.timeouts: list[float] = []

    def write(self, states: dict, timeout_s: float = 60.0) -> None:
        self.timeouts.append(timeout_s)
        if self.failing:
            self.failing -= 1
            raise RuntimeError("state topic lstmd-state: 1 chunks not stored")
        self.states.update(states)
        self.writes.append({p: s.offset for p, s in states.items()})

    def read(self, partitions) -> dict:
        return {p: self.states[p] for p in partitions if p in self.states}
