"""The slot table: which stream key owns which row of the LSTM state, parking, and resets.

Pure (numpy only). The table owns the host copy of every LSTM state: `states` holds the bound
slots' rows ([layers, 2, B, units]: h and c per layer), and each parked key carries its own
[layers, 2, units] rows. Evicting a key moves its rows, its normalisation statistics and its
buffered events out of the slot; restoring moves them back, so a key that returns continues
exactly where it was.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from daemon.core.scaling import RunningStats


class ResetReason(StrEnum):
    """Why a key's LSTM state was set to zero."""

    EVENT_FLAG = "event_flag"
    IDLE_GAP = "idle_gap"
    PERIODIC = "periodic"
    PARKED_DROPPED = "parked_dropped"


@dataclass(slots=True)
class Pending:
    """One accepted event waiting in its key's buffer to be trained on."""

    partition: int
    offset: int
    ts: float
    x: np.ndarray  # float32 [F], normalised
    naive: np.ndarray | None  # the naive forecast of this event's target, original units
    location: np.ndarray  # target normalisation, frozen at ingest so nothing leaks back
    spread: np.ndarray
    forecast_mode: bool
    starts_sequence: bool
    received_at: float
    y: np.ndarray | None = None  # float32 [n_targets], normalised; None until known
    target: np.ndarray | None = None  # original units
    prediction: np.ndarray | None = None  # original units, once published

    @property
    def trainable(self) -> bool:
        return self.y is not None


@dataclass(slots=True)
class KeyState:
    """Everything lstmd knows about one stream key, except its LSTM rows while bound."""

    key: str
    feature_stats: RunningStats
    target_stats: RunningStats
    buffer: list[Pending] = field(default_factory=list)
    last_ts: float | None = None
    last_target: np.ndarray | None = None
    reset_epoch: int = 0
    parked_state: np.ndarray | None = None  # [layers, 2, units] while parked
    # Forecast mode with difference scaling: the last target level and the spread of its steps.
    last_level: np.ndarray | None = None
    diff_stats: RunningStats | None = None

    def trainable_count(self) -> int:
        """Return how many buffered events already know their target."""
        count = 0
        for pending in self.buffer:
            if pending.y is None:
                break
            count += 1
        return count


def reset_reason(
    state: KeyState, ts: float, reset_flag: bool, reset_after_idle_s: float
) -> ResetReason | None:
    """Decide whether an event starts a new sequence for its key (per-key reset policy)."""
    if state.last_ts is None:
        return None
    if reset_flag:
        return ResetReason.EVENT_FLAG
    if reset_after_idle_s > 0 and ts - state.last_ts > reset_after_idle_s:
        return ResetReason.IDLE_GAP
    return None


class SlotTable:
    """Bind keys to B state rows, park the least-recently-active, restore on return."""

    def __init__(
        self,
        state_shape: tuple[int, int, int, int],
        n_features: int,
        n_targets: int,
        max_parked_keys: int,
    ) -> None:
        self.states = np.zeros(state_shape, dtype=np.float32)
        self.batch_size = state_shape[2]
        self.n_features = n_features
        self.n_targets = n_targets
        self.max_parked_keys = max_parked_keys
        self.rows: list[KeyState | None] = [None] * self.batch_size
        self.slot_of: dict[str, int] = {}
        # Bound keys, least recently active first: the head is the next to evict.
        self._recency: OrderedDict[str, None] = OrderedDict()
        self.parked: OrderedDict[str, KeyState] = OrderedDict()
        self._free = list(range(self.batch_size - 1, -1, -1))
        self.epoch = 0
        self.evictions = 0
        self.parked_dropped = 0

    def touch(self, key: str) -> None:
        """Mark a bound key as the most recently active."""
        self._recency.move_to_end(key)

    def bound(self, key: str) -> KeyState | None:
        """Return the state of a key that holds a slot, else None."""
        slot = self.slot_of.get(key)
        return None if slot is None else self.rows[slot]

    def has_free_slot(self) -> bool:
        return bool(self._free)

    def victim(self) -> int:
        """Return the slot of the least-recently-active bound key."""
        return self.slot_of[next(iter(self._recency))]

    def bind(self, key: str) -> tuple[int, KeyState]:
        """Give a key a free slot, restoring its parked state or starting from zero."""
        slot = self._free.pop()
        state = self.parked.pop(key, None)
        if state is None:
            state = KeyState(key, RunningStats(self.n_features), RunningStats(self.n_targets))
            state.reset_epoch = self.epoch
            self.states[:, :, slot, :] = 0.0
        else:
            if state.reset_epoch < self.epoch:
                state.parked_state[...] = 0.0  # a global reset happened while it was parked
                state.reset_epoch = self.epoch
            self.states[:, :, slot, :] = state.parked_state
            state.parked_state = None
        self.rows[slot] = state
        self.slot_of[key] = slot
        self._recency[key] = None
        return slot, state

    def evict(self, slot: int) -> KeyState | None:
        """Park the key in `slot`; return a parked key dropped to stay within the cap, if any."""
        state = self.rows[slot]
        assert state is not None, "evicting an empty slot"
        self.rows[slot] = None
        del self.slot_of[state.key]
        del self._recency[state.key]
        self._free.append(slot)
        self.evictions += 1
        if self.max_parked_keys == 0:
            self.parked_dropped += 1
            return state
        state.parked_state = self.states[:, :, slot, :].copy()
        self.parked[state.key] = state
        if len(self.parked) > self.max_parked_keys:
            _, dropped = self.parked.popitem(last=False)
            self.parked_dropped += 1
            return dropped
        return None

    def reset_row(self, slot: int) -> None:
        """Zero one slot's LSTM state."""
        self.states[:, :, slot, :] = 0.0

    def reset_all(self) -> int:
        """Zero every key's state (parked ones lazily, on restore); return how many keys."""
        self.states[...] = 0.0
        self.epoch += 1
        for state in self.rows:
            if state is not None:
                state.reset_epoch = self.epoch
        return len(self.slot_of) + len(self.parked)

    def bound_states(self) -> list[tuple[int, KeyState]]:
        """Return (slot, state) for every bound slot."""
        return [(slot, state) for slot, state in enumerate(self.rows) if state is not None]

    def recency_order(self) -> list[str]:
        """Return the bound keys, least recently active first."""
        return list(self._recency)

    def free_slots(self) -> list[int]:
        """Return the free slots in the order they will be handed out (last first)."""
        return list(self._free)

    def restore(
        self,
        bound: list[tuple[int, KeyState]],
        parked: list[KeyState],
        rows: np.ndarray,
        slots: np.ndarray,
        free: list[int],
        epoch: int,
        evictions: int,
        parked_dropped: int,
    ) -> None:
        """Load a saved table into this empty one.

        Args:
            bound: (slot, state) of bound keys, least recently active first.
            parked: parked keys, least recently used first.
            rows: [keys, layers, 2, units] LSTM rows, bound keys first, in the order above.
            slots: slot per key (-1 for parked), same order as `rows`.
            free: the free slots in hand-out order.
        """
        assert not self.slot_of and not self.parked, "restore into a used table"
        for index, (slot, state) in enumerate(bound):
            self.rows[slot] = state
            self.slot_of[state.key] = slot
            self._recency[state.key] = None
            self.states[:, :, slot, :] = rows[index]
        for index, state in enumerate(parked, start=len(bound)):
            state.parked_state = rows[index]  # a view: the restored array is this table's own
            self.parked[state.key] = state
        assert (slots[: len(bound)] >= 0).all() and (slots[len(bound) :] < 0).all()
        self._free = list(free)
        self.epoch = epoch
        self.evictions = evictions
        self.parked_dropped = parked_dropped

    def key_state_rows(self, key: str) -> np.ndarray | None:
        """Return a copy of a key's [layers, 2, units] LSTM rows, bound or parked."""
        slot = self.slot_of.get(key)
        if slot is not None:
            return self.states[:, :, slot, :].copy()
        parked = self.parked.get(key)
        if parked is None:
            return None
        if parked.reset_epoch < self.epoch:
            return np.zeros_like(parked.parked_state)
        return parked.parked_state.copy()
