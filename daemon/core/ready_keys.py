"""Ready keys: the keys with trainable events, in wait order, and the batch-close rule. Pure.

A key is ready while it holds a trainable event (one whose target is known) and full while it
holds a whole window of them. Both lists keep the order keys joined them, oldest first, so a
train step takes the keys that waited longest (DESIGN §4). A batch closes when B keys are full,
when every ready key is full, when one hot key holds `HOT_KEY_WINDOWS` windows, or (the learner's
wall-clock close) when the oldest waiting event has waited `max_batch_wait_ms`.
"""

from __future__ import annotations

from daemon.core.forecasts import KeyRef
from daemon.core.store import KeyStateStore

# A key holding this many windows of trainable events closes a batch without waiting for the
# others: a hot key next to cold ones must not buffer without bound.
HOT_KEY_WINDOWS = 2


class ReadyKeys:
    """Keys with trainable events (`ready`) and with a full window of them (`full`)."""

    def __init__(self, window: int, batch_size: int) -> None:
        """Set up for train steps of `batch_size` keys × `window` events."""
        self._window = window
        self._batch_size = batch_size
        # Dicts as ordered sets: insertion order is wait order, and a re-insert goes last.
        self.ready: dict[KeyRef, None] = {}
        self.full: dict[KeyRef, None] = {}
        self.opened_at: float | None = None  # when the oldest waiting event arrived

    def counted(self, ref: KeyRef, trainable: int) -> None:
        """Note that a key's trainable events just rose by one, to `trainable`."""
        if trainable == 1:
            self.ready[ref] = None
        if trainable == self._window:
            self.full[ref] = None

    def requeue(self, ref: KeyRef, before: int, left: int) -> None:
        """Move a key a train step took events from: `before` trainable then, `left` now."""
        self.ready.pop(ref, None)
        if left:
            self.ready[ref] = None  # to the back of the queue
        if before >= self._window > left:
            self.full.pop(ref, None)
        elif left >= self._window:
            self.full.pop(ref, None)
            self.full[ref] = None

    def remove(self, refs: list[KeyRef]) -> None:
        """Forget keys that were dropped from their store."""
        for ref in refs:
            self.ready.pop(ref, None)
            self.full.pop(ref, None)

    def forget_partition(self, partition: int) -> None:
        """Forget a partition's keys (it was revoked)."""
        for index in (self.ready, self.full):
            for ref in [ref for ref in index if ref[0] == partition]:
                del index[ref]

    def adopt(self, ready: list[KeyRef], full: list[KeyRef]) -> None:
        """Append restored keys, in their saved order."""
        for ref in ready:
            self.ready[ref] = None
        for ref in full:
            self.full[ref] = None

    def reopen(self, stores: dict[int, KeyStateStore]) -> None:
        """Restart the batch clock at the oldest trainable event still waiting, if any."""
        self.opened_at = None
        for partition, row in self.ready:
            store = stores[partition]
            self.opened_at = float(store.events.received_at[int(store.head[row])])
            return

    def due(self, store: KeyStateStore, ref: KeyRef) -> list[KeyRef] | None:
        """Return the keys of the batch the close rule calls for after `ref`'s event, if any.

        Args:
            store: The store of the key that just received an event.
            ref: That key.

        Returns:
            The candidate keys, in the order a step should take them; None when no batch is due.
        """
        full = self.full
        if len(full) >= self._batch_size or (full and len(full) == len(self.ready)):
            return list(full)
        if store.trainable[ref[1]] >= HOT_KEY_WINDOWS * self._window:
            return [ref, *(r for r in full if r != ref)]
        return None
