"""A store's key -> row map: an open-addressing hash table in flat arrays. Pure.

A dict of str -> int costs an idle key about 62 bytes beyond its string: a 32-byte int object
for the row (only -5..256 are shared) and about 30 bytes of table. Here a key costs one 4-byte
slot in a table 1/4 to 2/3 full (6 to 16 bytes) and an 8-byte insertion number, next to the
row -> key list that publishing needs anyway. Lookups probe linearly from the key's str hash,
which Python caches in the string. Iteration follows insertion order, as a dict's does, since
snapshots save the keys in that order and restore them into rows in that order.

>>> keys = KeyMap()
>>> keys.insert("a", 0)
>>> keys.insert("b", 1)
>>> keys.get("b"), keys.get("c"), list(keys)
(1, None, ['a', 'b'])
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import numpy as np

from daemon.core import pages

EMPTY = -1  # a slot never used since the last rebuild: a probe stops here
DELETED = -2  # a slot whose key was removed: a probe passes over it
# Slots in use (live or deleted) per slot before the table is rebuilt: linear probing needs
# ~2 probes per hit and ~5 per miss at 2/3 (Knuth), still well under a microsecond in Python.
_MAX_LOAD = 2 / 3
_MIN_SLOTS = 16


class KeyMap:
    """Map each key of a store to its row; `keys` maps each row back to its key (None: free)."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []
        self._slots = array("i", [EMPTY]) * _MIN_SLOTS
        self._used = 0  # slots holding a row or DELETED
        self._live = 0
        self._added = np.zeros(0, np.int64)  # per row: its insertion number; 0 = free
        self._counter = 0

    def __len__(self) -> int:
        return self._live

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __getitem__(self, key: str) -> int:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __iter__(self) -> Iterator[str]:
        keys = self.keys
        return (keys[row] for row in self.rows().tolist())

    def _find(self, key: str) -> tuple[int, int]:
        """Probe for `key`: return (its slot, its row), or (the empty slot reached, EMPTY)."""
        slots, keys = self._slots, self.keys
        mask = len(slots) - 1
        index = hash(key) & mask
        while True:
            row = slots[index]
            if row == EMPTY or (row >= 0 and keys[row] == key):
                return index, row
            index = (index + 1) & mask

    def get(self, key: str, default: int | None = None) -> int | None:
        """Return the row of `key`, or `default` when the map does not hold it."""
        row = self._find(key)[1]
        return default if row == EMPTY else row

    def values(self) -> list[int]:
        """Return the rows, in insertion order."""
        return self.rows().tolist()

    def items(self) -> Iterator[tuple[str, int]]:
        """Yield (key, row) in insertion order."""
        keys = self.keys
        return ((keys[row], row) for row in self.rows().tolist())

    def rows(self) -> np.ndarray:
        """Return the rows in use, in the order their keys were inserted."""
        added = self._added[: len(self.keys)]
        rows = np.flatnonzero(added)
        return rows[np.argsort(added[rows], kind="stable")]

    def insert(self, key: str, row: int) -> None:
        """Map a key the map does not hold to `row`, a free row (one past the last, or freed)."""
        if self._used + 1 > _MAX_LOAD * len(self._slots):
            self._rebuild()
        slots = self._slots
        mask = len(slots) - 1
        index = hash(key) & mask
        while slots[index] >= 0:
            index = (index + 1) & mask
        if slots[index] == EMPTY:
            self._used += 1
        slots[index] = row
        if row == len(self.keys):
            self.keys.append(key)
            if row >= len(self._added):
                # Fresh zero pages: spare rows cost no RSS.
                self._added = pages.grown(self._added, max(_MIN_SLOTS, 2 * len(self._added)))
        elif self.keys[row] is None:
            self.keys[row] = key
        else:
            raise ValueError(f"row {row} already holds key {self.keys[row]!r}")
        self._counter += 1
        self._added[row] = self._counter
        self._live += 1

    def extend(self, keys: list[str]) -> None:
        """Map distinct new keys to the next rows, in order, with one rebuild (for restores).

        Raises:
            ValueError: the map has free rows, holds one of the keys, or they repeat.
        """
        start = len(self.keys)
        if self._live != start:
            raise ValueError("extend needs a map without free rows")
        if len(set(keys)) != len(keys) or (self._live and any(key in self for key in keys)):
            raise ValueError("extend takes distinct keys the map does not hold")
        self.keys.extend(keys)
        if len(self.keys) > len(self._added):
            self._added = pages.grown(self._added, len(self.keys))
        self._added[start:] = np.arange(self._counter + 1, self._counter + 1 + len(keys))
        self._counter += len(keys)
        self._live += len(keys)
        self._rebuild()

    def remove(self, key: str) -> int:
        """Forget a key; return the row it had.

        Raises:
            KeyError: the map does not hold the key.
        """
        index, row = self._find(key)
        if row == EMPTY:
            raise KeyError(key)
        self._slots[index] = DELETED
        self.keys[row] = None
        self._added[row] = 0
        self._live -= 1
        return row

    def _rebuild(self) -> None:
        """Lay the live keys into a fresh table with room to grow; drops DELETED slots.

        Vectorised: every key still looking for a slot moves one slot on per round, and of the
        keys that reach the same empty slot in a round the first takes it. Every slot a key
        passes is then in use, so a probe from its hash still reaches it.
        """
        rows = self.rows()
        size = _MIN_SLOTS
        while 2 * (len(rows) + 1) > size:  # at most half full after a rebuild
            size *= 2
        keys = self.keys
        position = np.fromiter((hash(keys[r]) for r in rows.tolist()), np.int64, len(rows))
        position &= size - 1
        table = np.full(size, EMPTY, np.int32)
        waiting = np.arange(len(rows))
        while len(waiting):
            at = position[waiting]
            free = table[at] == EMPTY
            slots, first = np.unique(at[free], return_index=True)
            table[slots] = rows[waiting[free][first]]
            placed = np.zeros(len(waiting), bool)
            placed[np.flatnonzero(free)[first]] = True
            waiting = waiting[~placed]
            position[waiting] = (position[waiting] + 1) & (size - 1)
        self._slots = array("i")
        self._slots.frombytes(table.tobytes())
        self._used = len(rows)
