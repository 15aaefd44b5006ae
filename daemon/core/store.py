"""The key-state store of one input partition: every key's state as rows of contiguous arrays.

Pure (numpy only). A key → row map (`KeyMap`, a hash table in flat arrays) points into arrays
that hold, per key, its LSTM state (h and c per layer), the state its forecasts run ahead on, its
normalisation statistics, its last event time and values, and the head and tail of its queue of
pending events (`PendingEvents`). Gathering any B keys' states is one indexed copy, and an idle
key costs little more than its raw bytes.
Arrays grow by doubling into fresh zero pages (`pages`), which cost no RSS until a key's row is
written, so the spare half of a doubling is free; rows of dropped keys are reused. Columns only
one mode uses (the last supervised target; the last forecast level) are allocated on first use.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

from daemon.core import pages
from daemon.core.derived import DerivedFeatures
from daemon.core.intervals import IntervalCalibrator
from daemon.core.keymap import KeyMap
from daemon.core.pending import ANSWERED, HAS_Y, ID_DTYPE, MAX_IDS, NO_EVENT, FreeIds, PendingEvents
from daemon.core.scaling import StatsColumns
from daemon.core.smoothing import SmoothedFeatures

_INITIAL_ROWS = 64
# Columns of [n_targets] float64 that only one mode reads, so a store of the other mode never
# allocates them (16 bytes per key at one target).
_BY_MODE = ("last_level", "last_target")


class ResetReason(StrEnum):
    """Why a key's LSTM state was set to zero."""

    EVENT_FLAG = "event_flag"
    IDLE_GAP = "idle_gap"
    PERIODIC = "periodic"
    DROPPED = "dropped"


def reset_reason(
    last_ts: float, ts: float, reset_flag: bool, reset_after_idle_s: float
) -> ResetReason | None:
    """Decide whether an event starts a new sequence for its key (per-key reset policy).

    Args:
        last_ts: the key's previous event time; NaN for a key's first event.
    """
    if math.isnan(last_ts):
        return None
    if reset_flag:
        return ResetReason.EVENT_FLAG
    if reset_after_idle_s > 0 and ts - last_ts > reset_after_idle_s:
        return ResetReason.IDLE_GAP
    return None


class KeyStateStore:
    """Keys of one input partition, their states, statistics and pending events."""

    def __init__(
        self,
        partition: int,
        layers: int,
        units: int,
        n_inputs: int,
        n_targets: int,
        capacity: int = _INITIAL_ROWS,
        derived: DerivedFeatures | None = None,
        horizon: int = 1,
        intervals: IntervalCalibrator | None = None,
        smoothing: SmoothedFeatures | None = None,
    ) -> None:
        self.partition = partition
        self.smoothing = smoothing  # the keys' smoothed forecasts; None when off
        # The last inputs are already in target units (the smoothed features): they skip the
        # per-key normalisation.
        self.prescaled = 0 if smoothing is None else smoothing.width
        self.derived = derived  # the keys' calendar and lag history; None when off
        self.intervals = intervals  # the keys' interval calibration; None when off
        self.layers, self.units = layers, units
        self.n_inputs, self.n_targets = n_inputs, n_targets
        self.row_of = KeyMap()
        self.keys = self.row_of.keys  # row -> key (None: a free row)
        self._free_rows = FreeIds()
        self._by_mode: dict[str, np.ndarray] = {}  # _BY_MODE columns, once used
        self.capacity = 0
        n_bounds = 0 if intervals is None else intervals.bounds
        # H values per target; with intervals, their published bounds too.
        self.events = PendingEvents(n_inputs, n_targets, horizon=horizon, n_bounds=n_bounds)
        self.feature_stats = StatsColumns(n_inputs, 0)
        self.target_stats = StatsColumns(n_targets, 0)  # supervised targets
        self.step_stats = StatsColumns(n_targets, 0)  # forecast: steps of the target level
        self._grow(capacity)

    # ---- rows ---------------------------------------------------------------------------

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        if capacity > MAX_IDS:
            raise ValueError(f"a store holds at most {MAX_IDS} keys; set stream.max_keys lower")
        state_row = (self.layers, 2, self.units)
        # Every column is zeros until `add` writes a row's defaults (NaN times, no events): fresh
        # zero pages cost no RSS, so the rows a doubling adds are free until keys take them.
        # Ids and counts are int32 (see pending.ID_DTYPE); the recency stamp counts every event
        # of the learner, which can pass 2**31 in days, so it stays int64.
        columns: dict[str, tuple[tuple[int, ...], type]] = {
            "states": (state_row, np.float32),  # committed: what training continues from
            "ahead": (state_row, np.float32),  # after the answered pending events
            "last_ts": ((), np.float64),
            "last_active": ((), np.int64),
            "head": ((), ID_DTYPE),
            "tail": ((), ID_DTYPE),
            "pending": ((), np.int32),  # events in the queue
            "trainable": ((), np.int32),  # leading events whose target is known
        }
        for name, (tail, dtype) in columns.items():
            existing: np.ndarray = getattr(self, name, np.zeros((0, *tail), dtype))
            setattr(self, name, pages.grown(existing, capacity))
        for name, values in self._by_mode.items():
            self._by_mode[name] = pages.grown(values, capacity)
        self.states: np.ndarray
        self.ahead: np.ndarray
        self.last_ts: np.ndarray
        self.last_active: np.ndarray
        self.head: np.ndarray
        self.tail: np.ndarray
        self.pending: np.ndarray
        self.trainable: np.ndarray
        for stats in (self.feature_stats, self.target_stats, self.step_stats):
            stats.grow(capacity)
        if self.derived is not None:
            self.derived.grow(capacity)
        if self.intervals is not None:
            self.intervals.grow(capacity)
        if self.smoothing is not None:
            self.smoothing.grow(capacity)
        self._free_rows.add_range(old, capacity)
        self.capacity = capacity

    def _mode_column(self, name: str) -> np.ndarray:
        values = self._by_mode.get(name)
        if values is None:  # first use: every row, in use or spare, has no value yet
            values = pages.zeros((self.capacity, self.n_targets), np.float64)
            values[...] = math.nan
            self._by_mode[name] = values
        return values

    @property
    def last_level(self) -> np.ndarray:
        """Forecast mode ("difference" scaling): each key's last target level; NaN: none."""
        return self._mode_column("last_level")

    @property
    def last_target(self) -> np.ndarray:
        """Supervised mode: each key's last target (its naive forecast); NaN: none."""
        return self._mode_column("last_target")

    def mode_columns(self) -> dict[str, np.ndarray]:
        """Return the per-mode columns allocated so far (the others hold NaN in every row)."""
        return dict(self._by_mode)

    def __len__(self) -> int:
        return len(self.row_of)

    def add(self, key: str) -> int:
        """Give a new key a row with zero state and no history; return the row."""
        if not self._free_rows:
            self._grow(2 * self.capacity)
        row = self._free_rows.pop()
        self.row_of.insert(key, row)
        self.last_ts[row] = math.nan
        self.head[row] = self.tail[row] = NO_EVENT
        for values in self._by_mode.values():
            values[row] = math.nan
        return row

    def add_all(self, keys: list[str]) -> None:
        """Give distinct new keys rows 0, 1, ... of an empty store, in order (for restores)."""
        if len(self) or len(self.keys):
            raise ValueError("add_all fills an empty store")
        capacity = self.capacity
        while capacity < len(keys):
            capacity *= 2
        if capacity > self.capacity:
            self._grow(capacity)
        for row in range(len(keys)):
            if self._free_rows.pop() != row:
                raise RuntimeError("a fresh store hands out rows in order")
        self.row_of.extend(keys)
        rows = slice(0, len(keys))
        self.last_ts[rows] = math.nan
        self.head[rows] = self.tail[rows] = NO_EVENT
        for values in self._by_mode.values():
            values[rows] = math.nan

    def _clear(self, row: int) -> None:
        """Give a dropped key's row the values of a new key's (zeros; `add` sets the rest)."""
        self.states[row] = 0.0
        self.ahead[row] = 0.0
        self.last_active[row] = 0
        self.pending[row] = self.trainable[row] = 0
        for stats in (self.feature_stats, self.target_stats, self.step_stats):
            stats.clear(row)
        if self.derived is not None:
            self.derived.clear_row(row)
        if self.intervals is not None:
            self.intervals.clear(row)
        if self.smoothing is not None:
            self.smoothing.clear_row(row)

    def remove(self, row: int) -> list[int]:
        """Forget a key; return its pending events (still allocated: the caller releases them)."""
        key = self.keys[row]
        if key is None:
            raise KeyError(f"row {row} holds no key")
        events = self.events.chain(int(self.head[row]))
        self.row_of.remove(key)
        self._clear(row)
        self._free_rows.push(row)
        return events

    def least_recent(self, count: int) -> list[int]:
        """Return the rows of the `count` least recently active keys."""
        rows = self.row_of.rows()
        if count >= len(rows):
            return rows.tolist()
        stamps = self.last_active[rows]
        return rows[np.argpartition(stamps, count)[:count]].tolist()

    def zero_all_states(self) -> int:
        """Zero every key's LSTM states (the periodic reset); return how many keys."""
        self.states[...] = 0.0
        self.ahead[...] = 0.0
        return len(self.row_of)

    def live_rows(self) -> np.ndarray:
        """Return the rows in use, in the order keys were added (for snapshots)."""
        return self.row_of.rows()

    # ---- pending events ---------------------------------------------------------------------

    def append(self, row: int, event: int) -> None:
        """Put an event at the end of a key's queue."""
        tail = int(self.tail[row])
        if tail == NO_EVENT:
            self.head[row] = event
        else:
            self.events.next[tail] = event
        self.tail[row] = event
        self.pending[row] += 1

    def take(self, row: int, count: int) -> list[int]:
        """Unlink and return a key's `count` oldest pending events (still allocated)."""
        events = []
        event = int(self.head[row])
        nxt = self.events.next
        for _ in range(count):
            events.append(event)
            event = int(nxt[event])
        self.head[row] = event
        if event == NO_EVENT:
            self.tail[row] = NO_EVENT
        self.pending[row] -= count
        self.trainable[row] -= count
        return events

    def pop_last(self, row: int) -> int:
        """Unlink and return a key's newest pending event, which must not be trainable."""
        events = self.events.chain(int(self.head[row]))
        last = events.pop()
        if self.events.flags[last] & HAS_Y:
            raise ValueError("pop_last takes an event that waits for its target only")
        if events:
            self.events.next[events[-1]] = NO_EVENT
            self.tail[row] = events[-1]
        else:
            self.head[row] = self.tail[row] = NO_EVENT
        self.pending[row] -= 1
        return last

    def queue(self, row: int) -> list[int]:
        """Return a key's pending events, oldest first."""
        return self.events.chain(int(self.head[row]))

    def unanswered(self, row: int) -> bool:
        """Say whether any pending event of a key still waits for its prediction."""
        flags = self.events.flags
        return any(not flags[e] & ANSWERED for e in self.queue(row))

    def state_of(self, key: str) -> np.ndarray | None:
        """Return a copy of a key's [layers, 2, units] LSTM state, or None for an unknown key."""
        row = self.row_of.get(key)
        return None if row is None else self.states[row].copy()
