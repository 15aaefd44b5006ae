"""Pending events: accepted events not yet trained on, as rows of contiguous arrays. Pure.

Every key holds a queue of pending events (oldest first). An idle key in forecast mode always
holds one, its newest event, waiting for the successor that brings its target, so a Python
object per pending event would cost an idle key hundreds of bytes. Instead every field is one
column of an array indexed by an event id, and each key's queue is a linked list through `next`.
Ids are recycled through a free list; the arrays grow by doubling, and the spare rows cost no
RSS until used (fresh zero pages).
"""

from __future__ import annotations

import numpy as np

from daemon.core import pages

# Flag bits of `flags`.
HAS_Y = 1  # the target is known: the event is trainable
HAS_NAIVE = 2  # a naive forecast exists to score the model against
STARTS_SEQUENCE = 4  # a reset: the event starts a new sequence of its key
FORECAST_MODE = 8  # no `target` in the event: its target is its successor's features
ANSWERED = 16  # its prediction was published
COLD_SCALE = 32  # its target's spread is still its key's level: no step spread yet

NO_EVENT = -1
# Ids (of events and of store rows) are int32: 2**31 pending events would take ~190 GB, so the
# range is never the limit, and an idle key holds three ids (its queue's head and tail, and its
# event's `next`).
ID_DTYPE = np.int32
MAX_IDS = int(np.iinfo(ID_DTYPE).max)


class FreeIds:
    """Free ids of a pool of `capacity`: ids given back (a stack) and those never handed out.

    Only ids given back take memory (4 bytes each in an int32 array; a Python list costs ~36
    bytes per id): a pool that grows without dropping anything keeps no free list at all. Ids
    given back are handed out first, newest first, then the fresh ones in ascending order.
    """

    def __init__(self) -> None:
        self._ids = np.empty(0, np.int32)
        self._top = 0
        self._fresh = 0  # the lowest id never handed out
        self._capacity = 0

    def __len__(self) -> int:
        return self._top + self._capacity - self._fresh

    def add_range(self, start: int, stop: int) -> None:
        """Make ids start..stop-1 free, handed out in ascending order after the given-back ones.

        Raises:
            ValueError: the range does not continue the pool, or passes the int32 id range.
        """
        if start != self._capacity or stop > MAX_IDS:
            raise ValueError(f"ids {start}..{stop} do not extend a pool of {self._capacity}")
        self._capacity = stop

    def pop(self) -> int:
        """Take a free id (the caller checks `len` first)."""
        if self._top:
            self._top -= 1
            return int(self._ids[self._top])
        self._fresh += 1
        return self._fresh - 1

    def push(self, free: int) -> None:
        """Give an id back."""
        if self._top == len(self._ids):
            grown = np.empty(max(16, 2 * len(self._ids)), np.int32)
            grown[: self._top] = self._ids[: self._top]
            self._ids = grown
        self._ids[self._top] = free
        self._top += 1


class PendingEvents:
    """A pool of pending events with per-key linked queues kept by the caller (head, tail)."""

    def __init__(
        self,
        n_inputs: int,
        n_targets: int,
        capacity: int = 256,
        horizon: int = 1,
        n_bounds: int = 0,
    ) -> None:
        self.n_inputs = n_inputs
        self.n_targets = n_targets
        # A forecast holds H values per target: the target columns are n_targets × H wide,
        # laid out target by target (target i, step h at i * H + h - 1).
        self.width = n_targets * horizon
        # Interval bounds as published (per level its lower and upper, each `width` wide), kept
        # until the target scores them; 0 wide without intervals.
        self.bounds_width = n_bounds * self.width
        self.capacity = 0
        self._free = FreeIds()
        self.live = 0
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        old = self.capacity
        shapes: dict[str, tuple[tuple[int, ...], type]] = {
            "x": ((self.n_inputs,), np.float32),  # normalised model input
            "y": ((self.width,), np.float32),  # normalised target
            "target": ((self.width,), np.float64),  # original units
            "naive": ((self.width,), np.float64),  # naive forecast of the target
            "location": ((self.width,), np.float64),  # target normalisation, frozen at
            "spread": ((self.width,), np.float64),  # ingest so that nothing leaks back
            "prediction": ((self.width,), np.float64),  # original units, once answered
            "bounds": ((self.bounds_width,), np.float64),  # its intervals, once answered
            "ts": ((), np.float64),
            "offset": ((), np.int64),
            "received_at": ((), np.float64),
            "flags": ((), np.uint8),
            "next": ((), ID_DTYPE),
        }
        for name, (tail, dtype) in shapes.items():
            # Fresh zero pages cost no RSS until a row is written: spare capacity is free.
            existing = getattr(self, name) if old else np.zeros((0, *tail), dtype)
            setattr(self, name, pages.grown(existing, capacity))
        self.x: np.ndarray
        self.y: np.ndarray
        self.target: np.ndarray
        self.naive: np.ndarray
        self.location: np.ndarray
        self.spread: np.ndarray
        self.prediction: np.ndarray
        self.bounds: np.ndarray
        self.ts: np.ndarray
        self.offset: np.ndarray
        self.received_at: np.ndarray
        self.flags: np.ndarray
        self.next: np.ndarray
        self._free.add_range(old, capacity)
        self.capacity = capacity

    def new(self) -> int:
        """Return a free event id (its fields hold stale values: the caller sets every one)."""
        if not self._free:
            self._allocate(min(MAX_IDS, max(256, 2 * self.capacity)))
        event = self._free.pop()
        self.next[event] = NO_EVENT
        self.flags[event] = 0
        self.live += 1
        return event

    def release(self, event: int) -> None:
        """Give an event id back to the pool."""
        self.flags[event] = 0
        self._free.push(event)
        self.live -= 1

    def chain(self, head: int) -> list[int]:
        """Return the ids of a queue, oldest first."""
        ids = []
        event = head
        nxt = self.next
        while event != NO_EVENT:
            ids.append(event)
            event = int(nxt[event])
        return ids
