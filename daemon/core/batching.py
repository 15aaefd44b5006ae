"""Fixed-shape batches: up to B keys' pending events laid into [B, T, ...] with a mask. Pure.

Row b of a batch is one key, left-aligned; padded timesteps are masked and leave the LSTM state
unchanged. A row never crosses the start of a new sequence: a row that begins one starts from
zero state, so the compiled steps need no reset input. States are gathered from the keys' store
rows into the model's [layers, 2, B, units] layout and scattered back after the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.core.pending import ANSWERED, HAS_Y, STARTS_SEQUENCE
from daemon.core.store import KeyStateStore

# Forecast rows laid at least when fewer are needed, then powers of two up to the inference batch:
# the forecasts waiting before a train step often fill a few rows (one, with one key), and a row's
# forecast is the same bits in any batch of at least 8 rows (a narrower one takes another matrix
# kernel; `tests/unit/model/test_steps.py`).
MIN_FORECAST_ROWS = 8

# One row of a batch: a key (its store and row) and the event ids laid into it, in order.
Member = tuple[KeyStateStore, int, list[int]]
# The same row seen from its store: (row b of the batch, the key's row in the store, event ids).
Place = tuple[int, int, list[int]]


@dataclass(slots=True)
class Batch:
    """The inputs of one compiled step and the events it covers."""

    x: np.ndarray  # float32 [B, T, n_inputs]
    y: np.ndarray  # float32 [B, T, n_targets]; zeros for an inference batch
    mask: np.ndarray  # bool [B, T]
    states: np.ndarray  # float32 [layers, 2, B, units], the rows' start states
    members: list[Member]  # row b of the batch is members[b]


def padded_rows(needed: int, limit: int) -> int:
    """Return the rows to lay for `needed` forecast rows: MIN_FORECAST_ROWS or a power of two
    above, at most `limit`."""
    rows = MIN_FORECAST_ROWS
    while rows < needed:
        rows *= 2
    return min(rows, limit)


def train_segment(store: KeyStateStore, row: int, window: int) -> list[int]:
    """Return a key's oldest trainable events: up to `window`, within one sequence."""
    events = store.events
    flags, nxt = events.flags, events.next
    segment: list[int] = []
    event = int(store.head[row])
    limit = min(window, int(store.trainable[row]))
    while len(segment) < limit:
        flag = flags[event]
        if not flag & HAS_Y or (segment and flag & STARTS_SEQUENCE):
            break
        segment.append(event)
        event = int(nxt[event])
    return segment


def members_by_store(members: list[Member]) -> dict[KeyStateStore, list[Place]]:
    """Group a batch's rows by store: store -> [(batch row, key row, events)], in batch order.

    Most batches come from one store; writing states back and answering events once per store
    costs a few numpy calls for all its keys instead of a few per key.
    """
    groups: dict[KeyStateStore, list[Place]] = {}
    for b, (store, row, events) in enumerate(members):
        groups.setdefault(store, []).append((b, row, events))
    return groups


def scatter_states(target: np.ndarray, places: list[Place], states: np.ndarray) -> None:
    """Write a step's new states [layers, 2, B, units] back to the store rows of `places`."""
    rows = [row for _, row, _ in places]
    target[rows] = states[:, :, [b for b, _, _ in places], :].transpose(2, 0, 1, 3)


def laid_events(places: list[Place]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Return each event laid in `places`: its key row, id, batch row and timestep, in order."""
    key_rows: list[int] = []
    events: list[int] = []
    at_b: list[int] = []
    at_t: list[int] = []
    for b, row, laid in places:
        key_rows += [row] * len(laid)
        events += laid
        at_b += [b] * len(laid)
        at_t += range(len(laid))
    return key_rows, events, at_b, at_t


def unanswered_in(
    store: KeyStateStore, places: list[Place], outputs: np.ndarray
) -> tuple[list[int], list[int], np.ndarray]:
    """Return the laid events of `places` not answered yet, for `Outbox.publish`.

    Returns:
        Each such event's key row, its id, and its row of `outputs` ([B, T, ...] of the step or
        inference call that laid them), in batch order.
    """
    key_rows, laid, at_b, at_t = laid_events(places)
    waiting = np.flatnonzero(store.events.flags[laid] & ANSWERED == 0)
    return (
        [key_rows[i] for i in waiting],
        [laid[i] for i in waiting],
        outputs[np.take(at_b, waiting), np.take(at_t, waiting)],
    )


def _empty(batch_size: int, width: int, n_inputs: int, n_targets: int, state_row: tuple) -> Batch:
    layers, _, units = state_row
    return Batch(
        x=np.zeros((batch_size, width, n_inputs), np.float32),
        y=np.zeros((batch_size, width, n_targets), np.float32),
        mask=np.zeros((batch_size, width), bool),
        states=np.zeros((layers, 2, batch_size, units), np.float32),
        members=[],
    )


def build_train_batch(
    segments: list[Member], batch_size: int, window: int, n_inputs: int, n_targets: int
) -> Batch:
    """Lay up to B keys' train segments (from `train_segment`) into one batch.

    A row whose first event starts a new sequence starts from zero state; any other from the
    key's committed state.
    """
    if not segments or len(segments) > batch_size:
        raise ValueError(f"a train batch holds 1 to {batch_size} keys, got {len(segments)}")
    store0 = segments[0][0]
    batch = _empty(batch_size, window, n_inputs, n_targets, store0.states.shape[1:])
    # Once per store, not per key: a few numpy calls lay all its keys' events and states.
    for store, places in members_by_store(segments).items():
        laid, at_b, at_t = _lay_inputs(batch, store, places)
        batch.y[at_b, at_t] = store.events.y[laid]
        continuing = _continuing(store, places)
        if continuing:
            at = [b for b, _, _ in continuing]
            rows = [row for _, row, _ in continuing]
            batch.states[:, :, at, :] = store.states[rows].transpose(1, 2, 0, 3)
    batch.members = segments
    return batch


def _lay_inputs(
    batch: Batch, store: KeyStateStore, places: list[Place]
) -> tuple[list[int], list[int], list[int]]:
    """Write a store's laid events' inputs and mask into `batch`; return (events, rows, steps)."""
    _, laid, at_b, at_t = laid_events(places)
    batch.x[at_b, at_t] = store.events.x[laid]
    batch.mask[at_b, at_t] = True
    return laid, at_b, at_t


def _continuing(store: KeyStateStore, places: list[Place]) -> list[Place]:
    """Return the places whose first event continues its key's sequence (needs its state)."""
    starts = store.events.flags[[laid[0] for _, _, laid in places]] & STARTS_SEQUENCE
    return [place for place, start in zip(places, starts.tolist(), strict=True) if not start]


def split_chunks(store: KeyStateStore, events: list[int], width: int) -> list[list[int]]:
    """Cut a key's events into runs of at most `width` that never cross a sequence start."""
    if len(events) == 1:
        # The usual case with many keys: one new event per key per poll, one chunk as it is.
        return [events]
    flags = store.events.flags
    chunks: list[list[int]] = []
    current: list[int] = []
    for event in events:
        if current and (len(current) == width or flags[event] & STARTS_SEQUENCE):
            chunks.append(current)
            current = []
        current.append(event)
    if current:
        chunks.append(current)
    return chunks


def build_infer_batch(
    chunks: list[tuple[KeyStateStore, int, list[int], np.ndarray]],
    batch_size: int,
    width: int,
    n_inputs: int,
    n_targets: int,
) -> Batch:
    """Lay up to B chunks (store, row, events, start state [layers, 2, units]) into one batch.

    A chunk whose first event starts a new sequence runs from zero state, whatever is given.
    """
    if not chunks or len(chunks) > batch_size:
        raise ValueError(f"an inference batch holds 1 to {batch_size} rows, got {len(chunks)}")
    store0 = chunks[0][0]
    batch = _empty(batch_size, width, n_inputs, n_targets, store0.states.shape[1:])
    batch.members = [(store, row, events) for store, row, events, _ in chunks]
    starts = [start for _, _, _, start in chunks]  # by batch row
    # Once per store, not per key: a few numpy calls lay all its keys' events and states.
    for store, places in members_by_store(batch.members).items():
        _lay_inputs(batch, store, places)
        continuing = [b for b, _, _ in _continuing(store, places)]
        if continuing:
            batch.states[:, :, continuing, :] = np.stack([starts[b] for b in continuing], axis=2)
    return batch
