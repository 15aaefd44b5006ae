"""Deferred inputs: accepted events' inputs normalised later, many keys per numpy call. Pure.

Normalising an event's inputs folds them into its key's running statistics first (DESIGN §4),
one small numpy operation per event when done at ingest. Nothing at ingest reads the result, so
the learner defers it until something does (inference, a train step, a snapshot) and then
normalises in rounds: the r-th deferred event of every key in one call per store. Each key's
events still fold in arrival order, and every number sees the same IEEE operations as one event
at a time, so the inputs are bit-identical.
"""

from __future__ import annotations

import numpy as np

from daemon.core.scaling import CLIP_SIGMAS
from daemon.core.store import KeyStateStore

# One deferred event: its store, its key's row there, its event id, and its raw inputs.
Deferred = tuple[KeyStateStore, int, int, np.ndarray]


class DeferredInputs:
    """Events whose normalised inputs wait, in arrival order, for `settle`."""

    def __init__(self) -> None:
        self._items: list[Deferred] = []
        self._keys: set[tuple[int, int]] = set()  # (id of the store, row) of every queued event

    def defer(self, store: KeyStateStore, row: int, event: int, inputs: np.ndarray) -> None:
        """Queue an event's raw inputs; `settle` writes them normalised to `store.events.x`."""
        self._items.append((store, row, event, inputs))
        self._keys.add((id(store), row))

    def holds(self, store: KeyStateStore, row: int) -> bool:
        """Say whether a key has events queued: its statistics lag its events until `settle`."""
        return (id(store), row) in self._keys

    def settle(self) -> None:
        """Normalise every deferred event's inputs, in rounds (see the module docstring)."""
        if not self._items:
            return
        items, self._items = self._items, []
        self._keys = set()
        for round_items in _rounds(items):
            for group in _by_store(round_items):
                _normalise_group(group)


def _rounds(items: list[Deferred]) -> list[list[Deferred]]:
    """Split events into rounds: round r holds the r-th event of every key, in arrival order."""
    rounds: dict[int, list[Deferred]] = {}
    seen: dict[tuple[int, int], int] = {}
    for item in items:
        place = (id(item[0]), item[1])
        r = seen.get(place, 0)
        seen[place] = r + 1
        rounds.setdefault(r, []).append(item)
    return list(rounds.values())  # in round order: dicts keep insertion order


def _by_store(items: list[Deferred]) -> list[list[Deferred]]:
    """Group a round's events by store, stores in order of first appearance."""
    groups: dict[int, list[Deferred]] = {}
    for item in items:
        groups.setdefault(id(item[0]), []).append(item)
    return list(groups.values())


def _normalise_group(group: list[Deferred]) -> None:
    """Fold and normalise one store's events of a round (one event per key) in one call."""
    store = group[0][0]
    rows = np.array([item[1] for item in group], np.int64)
    values = np.stack([item[3] for item in group])
    z = store.feature_stats.fold_normalise_rows(rows, values)
    if store.prescaled:  # already in target units (the smoothed features): clipped only
        z[:, -store.prescaled :] = np.clip(values[:, -store.prescaled :], -CLIP_SIGMAS, CLIP_SIGMAS)
    store.events.x[[item[2] for item in group]] = z
