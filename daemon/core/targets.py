"""Targets: what each pending event is trained towards, assembled as later events arrive. Pure.

A supervised event brings its own target. A forecast-mode event's target is its key's next
value (DESIGN §3), or with horizon H > 1 its next H values, target-major: it is assembled from
the successors as they arrive, and the event becomes trainable once the last one is known. Each
event's target scale (location, spread) and naive forecast are fixed at ingest, from statistics
before the event, so nothing leaks from later events into what is published for it.
"""

from __future__ import annotations

import math

import numpy as np

from daemon.core.forecasts import KeyRef
from daemon.core.pending import HAS_NAIVE, HAS_Y, NO_EVENT, PendingEvents
from daemon.core.ready_keys import ReadyKeys
from daemon.core.scaling import normalise, normalise_one
from daemon.core.store import KeyStateStore


class TargetAssembly:
    """Give pending events their targets and hand keys that became trainable to `ReadyKeys`."""

    def __init__(self, n_targets: int, horizon: int, normalise: bool, keys: ReadyKeys) -> None:
        """Set up for `n_targets` targets of `horizon` steps each, normalised when `normalise`."""
        self._n_targets = n_targets
        self._horizon = horizon
        self._normalise = normalise
        self._keys = keys

    def frame_forecast(
        self,
        events: PendingEvents,
        e: int,
        level: np.ndarray,
        location: np.ndarray,
        spread: np.ndarray,
    ) -> None:
        """Fix a forecast-mode event's target scale and naive forecast (its level now)."""
        if self._horizon == 1:
            events.naive[e] = level
            events.location[e], events.spread[e] = location, spread
            return
        # Every step h is scaled around the level at t, the naive forecast of each.
        steps = (self._n_targets, self._horizon)  # views of the rows: no copies
        events.naive[e].reshape(steps)[...] = level[:, None]
        events.location[e].reshape(steps)[...] = location[:, None]
        events.spread[e].reshape(steps)[...] = spread[:, None]

    def frame_supervised(
        self, store: KeyStateStore, row: int, e: int, location: np.ndarray, spread: np.ndarray
    ) -> int:
        """Fix a supervised event's target scale; its naive forecast is the key's last target.

        Returns:
            The flag bits to add: HAS_NAIVE when the key had a target before, else 0.
        """
        events = store.events
        events.location[e], events.spread[e] = location, spread
        last = store.last_target[row]
        if math.isnan(last[0]):
            return 0
        events.naive[e] = last
        return HAS_NAIVE

    def given(self, store: KeyStateStore, ref: KeyRef, e: int, target: np.ndarray) -> None:
        """Take the target a supervised event carried: it is trainable, and the key's last."""
        self.known(store, ref, e, target)
        row = ref[1]
        if self._normalise:
            store.target_stats.update(row, target)
        store.last_target[row] = target

    def fill(self, store: KeyStateStore, ref: KeyRef, value: np.ndarray) -> None:
        """Hand a new event's target value(s) to the key's events that wait for them.

        The events t before it in its sequence without a complete target take `value` as their
        step h = (its position − t); the one at h = H becomes trainable.
        """
        events = store.events
        row = ref[1]
        if self._horizon == 1:
            previous = int(store.tail[row])
            if previous != NO_EVENT and not events.flags[previous] & HAS_Y:
                self.known(store, ref, previous, value)
            return
        waiting = _awaiting_targets(store, row)
        for h, e in enumerate(reversed(waiting), start=1):
            events.target[e, h - 1 :: self._horizon] = value
            if h == self._horizon:
                self.known(store, ref, e, events.target[e].copy())

    def known(self, store: KeyStateStore, ref: KeyRef, e: int, target: np.ndarray) -> None:
        """Make a pending event trainable: its target is now known."""
        events = store.events
        events.target[e] = target
        if self._normalise:
            if len(target) == 1:  # Python floats: the same IEEE operations, no 1-wide arrays
                events.y[e, 0] = normalise_one(
                    float(target[0]), events.location.item(e, 0), events.spread.item(e, 0)
                )
            else:
                events.y[e] = normalise(target, events.location[e], events.spread[e])
        else:
            events.y[e] = target
        events.flags[e] |= HAS_Y
        row = ref[1]
        store.trainable[row] += 1
        self._keys.counted(ref, int(store.trainable[row]))


def _awaiting_targets(store: KeyStateStore, row: int) -> list[int]:
    """Return a key's events still short of their H successors, oldest first (≤ H)."""
    # Forecast mode (H > 1 admits no other): exactly the events behind the trainable ones.
    waiting = int(store.pending[row] - store.trainable[row])
    if not waiting:
        return []
    queue = store.queue(row)
    return queue[len(queue) - waiting :]
