"""Forecasts: answer pending events by batched inference from each key's state ahead. Pure.

A forecast-mode event is answered once per poll (and before any train step, which would consume
it): every key that received events runs from its state ahead, the state after its answered
events, through its new ones. Keys' events are cut into chunks of at most the inference width
that never cross a sequence start; the k-th chunks of all keys share fixed-shape calls of the
compiled inference step, so a poll costs one call per chunk depth and `infer_batch_size` keys.
When a batch closes, the forecasts then waiting usually fit one such batch, and run inside the
train steps' call (`take_one_batch`, `settle`) instead of a call of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from daemon.core.batching import (
    Batch,
    build_infer_batch,
    members_by_store,
    padded_rows,
    scatter_states,
    split_chunks,
    unanswered_in,
)
from daemon.core.pending import ANSWERED, FORECAST_MODE
from daemon.core.store import KeyStateStore

KeyRef = tuple[int, int]  # (input partition, row in that partition's store)
# One key's inference: its store, row, the events to run through, and the state to start from.
Job = tuple[KeyStateStore, int, list[int], np.ndarray]
# Publishes answered events of one store: (store, each event's key row, events, normalised
# predictions with one row per event).
Publish = Callable[[KeyStateStore, list[int], list[int], np.ndarray], None]


class InferModel(Protocol):
    """What forecasting needs from the model (see `daemon.model.lstm.StatefulLSTM`)."""

    @property
    def infer_shape(self) -> tuple[int, int]: ...

    def infer(
        self, x: np.ndarray, mask: np.ndarray, states: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


def waiting_forecasts(flags: np.ndarray) -> np.ndarray:
    """Return which events (by their flags) are forecast-mode and not yet answered."""
    return ((flags & FORECAST_MODE) != 0) & ((flags & ANSWERED) == 0)


class Forecaster:
    """Keep the forecast-mode events waiting for an answer and answer them in batches."""

    def __init__(self, model: InferModel, publish: Publish, n_inputs: int, n_outputs: int) -> None:
        """Set up with the model's input width and output width (n_targets × horizon)."""
        self._model = model
        self._publish = publish
        self._rows, self._width = model.infer_shape
        self._n_inputs, self._n_outputs = n_inputs, n_outputs
        self.waiting: dict[KeyRef, list[int]] = {}  # per key, in arrival order
        self.calls = 0  # inference calls of their own
        self.in_step = 0  # batches answered inside a train step's call (`settle`)

    def wait(self, ref: KeyRef, event: int) -> None:
        """Queue a forecast-mode event for the next answer."""
        self.waiting.setdefault(ref, []).append(event)

    def forget_partition(self, partition: int) -> None:
        """Drop a partition's waiting events (it was revoked; its state was saved before)."""
        for ref in [ref for ref in self.waiting if ref[0] == partition]:
            del self.waiting[ref]

    def adopt(self, partition: int, store: KeyStateStore) -> None:
        """Queue a restored store's forecast-mode events that were never answered."""
        flags = store.events.flags
        if not np.any(waiting_forecasts(flags)):
            return  # the usual case: a snapshot is taken after answering every forecast
        for row in store.live_rows().tolist():
            waiting = [e for e in store.queue(row) if waiting_forecasts(flags[e : e + 1])[0]]
            if waiting:
                self.waiting[(partition, row)] = waiting

    def answer_waiting(self, stores: dict[int, KeyStateStore]) -> int:
        """Publish the forecasts of the waiting events; return how many."""
        if not self.waiting:
            return 0
        jobs = []
        for (partition, row), events in self.waiting.items():
            store = stores[partition]
            jobs.append((store, row, events, store.ahead[row]))
        self.waiting = {}
        return self._infer(jobs)

    def take_one_batch(self, stores: dict[int, KeyStateStore]) -> Batch | None:
        """Take the waiting forecasts laid out as one inference batch, if they fit in one.

        They fit when at most `infer_batch_size` keys wait, each with one chunk. The caller runs
        the batch (inside its train step's call) and hands the outputs to `settle`. Otherwise
        nothing is taken and None is returned: `answer_waiting` answers them in several calls.
        """
        if not self.waiting or len(self.waiting) > self._rows:
            return None
        chunks: list[Job] = []
        for (partition, row), events in self.waiting.items():
            store = stores[partition]
            parts = split_chunks(store, events, self._width)
            if len(parts) != 1:
                return None
            chunks.append((store, row, parts[0], store.ahead[row]))
        self.waiting = {}
        # Only as many rows as the train steps' call will lay for them (see `padded_rows`).
        rows = padded_rows(len(chunks), self._rows)
        return build_infer_batch(chunks, rows, self._width, self._n_inputs, self._n_outputs)

    @property
    def shape(self) -> tuple[int, int]:
        """Return an inference batch's (rows, timesteps)."""
        return self._rows, self._width

    def settle(self, batch: Batch, predictions: np.ndarray) -> int:
        """Answer the events of a batch from `take_one_batch`, given the model's predictions.

        The keys' states ahead are the caller's to write: the train steps' call returns them.
        """
        self.in_step += 1
        return self._publish_answers(batch, predictions)

    def answer_from_committed(self, stores: dict[int, KeyStateStore], refs: list[KeyRef]) -> int:
        """Answer keys' unanswered events by inference from their committed state."""
        jobs = []
        for partition, row in refs:
            store = stores[partition]
            jobs.append((store, row, store.queue(row), store.states[row]))
        return self._infer(jobs)

    def _infer(self, jobs: list[Job]) -> int:
        """Run keys through their events in fixed-shape inference batches; answer the events.

        A key's events are cut into chunks of at most the inference width; the k-th chunks of
        all keys run together, each from the state the previous chunk left in `ahead`.
        """
        queues = [
            (store, row, split_chunks(store, events, self._width), start)
            for store, row, events, start in jobs
            if events
        ]
        answered = 0
        depth = 0
        while queues:
            current = [
                (store, row, chunks[depth], start if depth == 0 else store.ahead[row])
                for store, row, chunks, start in queues
            ]
            for first in range(0, len(current), self._rows):
                answered += self.run(self._lay(current[first : first + self._rows]))
            depth += 1
            queues = [q for q in queues if len(q[2]) > depth]
        return answered

    def _lay(self, chunks: list[Job]) -> Batch:
        """Lay up to `infer_batch_size` keys' chunks into one fixed-shape inference batch."""
        return build_infer_batch(chunks, self._rows, self._width, self._n_inputs, self._n_outputs)

    def run(self, batch: Batch) -> int:
        """Answer the events of an inference batch in a call of its own."""
        predictions, states = self._model.infer(batch.x, batch.mask, batch.states)
        self.calls += 1
        return self._answer(batch, predictions, states)

    def _answer(self, batch: Batch, predictions: np.ndarray, states: np.ndarray) -> int:
        for store, places in members_by_store(batch.members).items():
            scatter_states(store.ahead, places, states)
        return self._publish_answers(batch, predictions)

    def _publish_answers(self, batch: Batch, predictions: np.ndarray) -> int:
        answered = 0
        # Once per store, not per key: the per-event work is a few numpy calls for them all.
        for store, places in members_by_store(batch.members).items():
            key_rows, events, outputs = unanswered_in(store, places, predictions)
            if events:
                self._publish(store, key_rows, events, outputs)
                answered += len(events)
        return answered
