"""Fixed-shape batches: each bound slot's buffered events laid into [B, T, ...] with a mask.

Pure (numpy only). Row b of every tensor is slot b, left-aligned; padded timesteps are masked and
leave the LSTM state unchanged. A row never crosses the start of a new sequence: a reset takes
effect by zeroing the row's state before the step, so the compiled step needs no reset input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daemon.core.slots import KeyState, Pending


@dataclass(slots=True)
class TrainBatch:
    """The inputs of one train step and the events it consumes."""

    x: np.ndarray  # float32 [B, T, F]
    y: np.ndarray  # float32 [B, T, n_targets]
    mask: np.ndarray  # bool [B, T]
    reset_rows: list[int]  # slots whose state is zeroed before the step
    taken: list[tuple[int, list[Pending]]]  # (slot, events in timestep order)


@dataclass(slots=True)
class InferBatch:
    """The inputs of one inference pass and the events whose predictions it yields."""

    x: np.ndarray  # float32 [B, W, F]
    mask: np.ndarray  # bool [B, W]
    zero_rows: list[int]  # slots whose pass starts from zero state (a new sequence)
    wanted: list[tuple[int, int, Pending]]  # (slot, timestep, event)


def _train_segment(buffer: list[Pending], window: int) -> list[Pending]:
    segment: list[Pending] = []
    for index, pending in enumerate(buffer[:window]):
        if pending.y is None or (index > 0 and pending.starts_sequence):
            break
        segment.append(pending)
    return segment


def build_train_batch(
    rows: Sequence[KeyState | None], window: int, n_features: int, n_targets: int
) -> TrainBatch | None:
    """Lay each slot's oldest trainable events (up to T, within one sequence) into a batch.

    Returns:
        The batch, or None when no slot holds a trainable event.
    """
    batch_size = len(rows)
    x = np.zeros((batch_size, window, n_features), dtype=np.float32)
    y = np.zeros((batch_size, window, n_targets), dtype=np.float32)
    mask = np.zeros((batch_size, window), dtype=bool)
    reset_rows: list[int] = []
    taken: list[tuple[int, list[Pending]]] = []
    for slot, state in enumerate(rows):
        if state is None:
            continue
        segment = _train_segment(state.buffer, window)
        if not segment:
            continue
        if segment[0].starts_sequence:
            reset_rows.append(slot)
        length = len(segment)
        x[slot, :length] = [p.x for p in segment]
        y[slot, :length] = [p.y for p in segment]
        mask[slot, :length] = True
        taken.append((slot, segment))
    if not taken:
        return None
    return TrainBatch(x, y, mask, reset_rows, taken)


def _last_segment_start(buffer: list[Pending]) -> int:
    for index in range(len(buffer) - 1, 0, -1):
        if buffer[index].starts_sequence:
            return index
    return 0


def needs_prediction(pending: Pending, include_supervised: bool) -> bool:
    """Say whether an event still waits for its prediction from an inference pass."""
    return pending.prediction is None and (pending.forecast_mode or include_supervised)


def build_infer_batch(
    rows: Sequence[KeyState | None], width: int, n_features: int, include_supervised: bool
) -> InferBatch | None:
    """Lay each slot's current sequence into a batch for the events that await a prediction.

    Only the newest sequence of a buffer can hold such events (the engine predicts before a new
    sequence begins), so a row runs from the slot's state, or from zero when that sequence
    starts a reset, over the buffered events of that sequence.

    Returns:
        The batch, or None when no event awaits a prediction.
    """
    batch_size = len(rows)
    x = np.zeros((batch_size, width, n_features), dtype=np.float32)
    mask = np.zeros((batch_size, width), dtype=bool)
    zero_rows: list[int] = []
    wanted: list[tuple[int, int, Pending]] = []
    for slot, state in enumerate(rows):
        if state is None or not state.buffer:
            continue
        start = _last_segment_start(state.buffer)
        segment = state.buffer[start:]
        waiting = [
            (slot, t, p) for t, p in enumerate(segment) if needs_prediction(p, include_supervised)
        ]
        if not waiting:
            continue
        if len(segment) > width:
            raise AssertionError(f"slot {slot} holds {len(segment)} events, more than {width}")
        if segment[0].starts_sequence:
            zero_rows.append(slot)
        x[slot, : len(segment)] = [p.x for p in segment]
        mask[slot, : len(segment)] = True
        wanted.extend(waiting)
    if not wanted:
        return None
    return InferBatch(x, mask, zero_rows, wanted)
