"""One compiled call of several train steps: the closed batches laid side by side. Pure.

The learner closes batches one at a time, per event (DESIGN §4). Each closed batch is laid at
once (`build_train_batch`, and the forecasts waiting before it, `Forecaster.take_one_batch`),
but the steps wait, up to `MAX_STEPS_PER_CALL`, and run together in one call of the model's
`train_steps` (Keras' `steps_per_execution`): the per-call cost of a small step is most of it.

A key may sit in several of the call's steps: its state is then the one the step before left,
which the host does not have yet. So the call carries a state table with one row ("slot") per
key of the call, gathered from the stores when the call runs, and every row of every step names
its key's slot; forecasts likewise name a slot of a second table of the keys' states ahead.
Padding rows start from zeros and write to spare slots past the keys', as in a call of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.core.batching import Batch, padded_rows
from daemon.core.pending import STARTS_SEQUENCE
from daemon.core.store import KeyStateStore

# Steps per compiled call at most. In `bench/train_steps.py` (B 32, T 4, 16 units, a forecast
# batch before each step) a step inside a call of 16 costs about half of a call of its own, and
# longer calls gain little more; a call's answers wait for its last step, so S stays small.
MAX_STEPS_PER_CALL = 16

# A key of the call: its store and its row there.
Slot = tuple[KeyStateStore, int]


@dataclass(slots=True)
class QueuedStep:
    """A closed batch waiting for its call, with the forecasts to answer before it (if any)."""

    batch: Batch
    forecasts: Batch | None


@dataclass(slots=True)
class StepCall:
    """The inputs of one `train_steps` call, and which key each table row belongs to."""

    inputs: tuple[np.ndarray, ...]  # in `train_steps`' order
    keys: list[Slot]  # the states table's rows (then the padding's spare rows)
    ahead_keys: list[Slot]  # the ahead table's rows, likewise


def row_starts(batch: Batch) -> np.ndarray:
    """Return which rows of a batch start from zeros: padding, and a key's sequence start."""
    starts = np.ones(len(batch.mask), bool)
    for b, (store, _, events) in enumerate(batch.members):
        starts[b] = bool(store.events.flags[events[0]] & STARTS_SEQUENCE)
    return starts


def _slots(members: list, slot_of: dict[Slot, int], keys: list[Slot], rows: int) -> np.ndarray:
    """Return each row's slot (new keys get the next ones); padding rows get -1 for now."""
    slots = np.full(rows, -1, np.int32)
    for b, (store, row, _) in enumerate(members):
        key = (store, row)
        slot = slot_of.get(key)
        if slot is None:
            slot = slot_of[key] = len(keys)
            keys.append(key)
        slots[b] = slot
    return slots


def _table(keys: list[Slot], column: str, spare: int, state_row: tuple) -> np.ndarray:
    """Gather the keys' rows of a store column ("states" or "ahead"), then `spare` zero rows."""
    table = np.zeros((len(keys) + spare, *state_row), np.float32)
    by_store: dict[KeyStateStore, tuple[list[int], list[int]]] = {}
    for slot, (store, row) in enumerate(keys):
        slots, rows = by_store.setdefault(store, ([], []))
        slots.append(slot)
        rows.append(row)
    for store, (slots, rows) in by_store.items():
        table[slots] = getattr(store, column)[rows]
    return table


def lay_call(queued: list[QueuedStep], infer_rows: int, infer_width: int) -> StepCall:
    """Lay queued steps (in closing order) as the inputs of one `train_steps` call."""
    needed = max((len(q.forecasts.members) for q in queued if q.forecasts is not None), default=1)
    infer_rows = padded_rows(needed, infer_rows)
    first = queued[0].batch
    batch_rows, _, n_inputs = first.x.shape
    state_row = first.states.shape[:2] + first.states.shape[3:]  # (layers, 2, units)
    steps = len(queued)
    keys: list[Slot] = []
    ahead_keys: list[Slot] = []
    slot_of: dict[Slot, int] = {}
    ahead_of: dict[Slot, int] = {}
    slots = np.stack([_slots(q.batch.members, slot_of, keys, batch_rows) for q in queued])
    starts = np.stack([row_starts(q.batch) for q in queued])
    forecast = np.array([q.forecasts is not None for q in queued])
    fx = np.zeros((steps, infer_rows, infer_width, n_inputs), np.float32)
    fmask = np.zeros((steps, infer_rows, infer_width), bool)
    fstarts = np.ones((steps, infer_rows), bool)
    fslots = np.full((steps, infer_rows), -1, np.int32)
    for i, q in enumerate(queued):
        if q.forecasts is not None:
            laid = min(len(q.forecasts.x), infer_rows)  # its members, and maybe padding
            fx[i, :laid], fmask[i, :laid] = q.forecasts.x[:laid], q.forecasts.mask[:laid]
            fstarts[i, :laid] = row_starts(q.forecasts)[:laid]
            fslots[i] = _slots(q.forecasts.members, ahead_of, ahead_keys, infer_rows)
    # Padding rows: row b of any step writes spare slot K + b, which no key reads.
    _spare(slots, len(keys))
    _spare(fslots, len(ahead_keys))
    inputs = (
        np.stack([q.batch.x for q in queued]),
        np.stack([q.batch.y for q in queued]),
        np.stack([q.batch.mask for q in queued]),
        starts,
        slots,
        _table(keys, "states", batch_rows, state_row),
        forecast,
        fx,
        fmask,
        fstarts,
        fslots,
        _table(ahead_keys, "ahead", infer_rows, state_row),
    )
    return StepCall(inputs, keys, ahead_keys)


def _spare(slots: np.ndarray, keys: int) -> None:
    padding = slots < 0
    slots[padding] = (keys + np.nonzero(padding)[1]).astype(np.int32)


def write_back(keys: list[Slot], table: np.ndarray, column: str) -> None:
    """Write the call's table rows back to the keys' store rows of `column`."""
    by_store: dict[KeyStateStore, tuple[list[int], list[int]]] = {}
    for slot, (store, row) in enumerate(keys):
        slots, rows = by_store.setdefault(store, ([], []))
        slots.append(slot)
        rows.append(row)
    for store, (slots, rows) in by_store.items():
        getattr(store, column)[rows] = table[slots]
