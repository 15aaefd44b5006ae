"""The prediction outbox: answered pending events become `Prediction` records. Pure.

Two things answer a store's events: the train step (supervised events, from its forward pass)
and batched inference (forecasts, see `Forecaster`). Both hand the outbox one store's answers at
a time, so building the records is a few numpy calls per store plus one tuple per event: the
predictions go back to the target's units, the events are marked answered, and the records wait
here until the runner takes them.
"""

from __future__ import annotations

import numpy as np

from daemon.core.pending import ANSWERED, COLD_SCALE, FORECAST_MODE
from daemon.core.records import Prediction
from daemon.core.scaling import denormalise
from daemon.core.store import KeyStateStore


class Outbox:
    """Queue one `Prediction` per answered event until the runner takes them."""

    def __init__(self, normalise: bool, n_targets: int, horizon: int) -> None:
        """Set up for predictions in normalised units (when `normalise`), n_targets × horizon."""
        self._normalise = normalise
        self._n_targets = n_targets
        self._horizon = horizon
        self._records: list[Prediction] = []

    def take(self) -> list[Prediction]:
        """Return and clear the queued predictions."""
        out, self._records = self._records, []
        return out

    def publish(
        self,
        store: KeyStateStore,
        rows: list[int],
        answered: list[int],
        normalised: np.ndarray,
        step: int,
    ) -> None:
        """Queue the predictions of a store's events.

        Args:
            store: The partition's store holding the events.
            rows: Row of each event's key in `store`.
            answered: The events (ids in `store.events`), each answered by one row below.
            normalised: The model's prediction per event, in normalised units.
            step: The train steps run so far, stamped on each record.

        Raises:
            KeyError: a row holds no key (a bug: an answered event outlived its key).
        """
        values, flags = self._mark_answered(store, answered, normalised)
        keys = _keys_of(store, rows)
        bounds = self._intervals(store, rows, answered, values)
        if self._horizon > 1:
            # One list of H values per target in the message (H = 1 keeps today's flat list).
            values = values.reshape(len(answered), self._n_targets, self._horizon)
        self._records += _records(store, keys, answered, flags, values, step, bounds)

    def _intervals(
        self, store: KeyStateStore, rows: list[int], answered: list[int], values: np.ndarray
    ) -> tuple[tuple[float, ...], np.ndarray | None]:
        """Return the levels and each event's interval bounds [k, levels, 2, ...], kept on it.

        The bounds' last axes are the prediction's ([n_targets], or [n_targets, H]).
        """
        calibrator = store.intervals
        if calibrator is None:
            return (), None
        events = store.events
        cold = (events.flags[answered] & COLD_SCALE) != 0
        bounds = calibrator.interval_bounds(
            np.asarray(rows), values, events.spread[answered], cold
        )  # [k, 2 × levels, width]
        events.bounds[answered] = bounds.reshape(len(answered), -1)
        shape = (self._n_targets,) if self._horizon == 1 else (self._n_targets, self._horizon)
        laid = bounds.reshape(len(answered), len(calibrator.levels), 2, *shape)
        return calibrator.levels, laid

    def _mark_answered(
        self, store: KeyStateStore, answered: list[int], normalised: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Store the events' predictions in target units, flag them answered.

        Returns:
            The predictions in target units, and the events' flags from before.
        """
        events = store.events
        values = normalised.astype(np.float64)
        if self._normalise:
            values = denormalise(values, events.location[answered], events.spread[answered])
        events.prediction[answered] = values
        flags = events.flags[answered]
        events.flags[answered] = flags | ANSWERED
        return values, flags


def _keys_of(store: KeyStateStore, rows: list[int]) -> list[str]:
    """Return the key of each row; raise KeyError naming the first row that holds none."""
    keys = [store.keys[row] for row in rows]
    if None in keys:
        row = rows[keys.index(None)]
        raise KeyError(f"row {row} of partition {store.partition} holds no key")
    return keys  # type: ignore[return-value]  # no None left


def _records(
    store: KeyStateStore,
    keys: list[str],
    answered: list[int],
    flags: np.ndarray,
    values: np.ndarray,
    step: int,
    bounds: tuple[tuple[float, ...], np.ndarray | None] = ((), None),
) -> list[Prediction]:
    """Build the records of a store's answered events, in the order given."""
    events, partition, targets = store.events, store.partition, store.events.target
    modes = ["forecast" if f else "supervised" for f in (flags & FORECAST_MODE).tolist()]
    columns = zip(
        keys,
        answered,
        modes,
        events.ts[answered].tolist(),
        events.offset[answered].tolist(),
        events.received_at[answered].tolist(),
        values,
        [None] * len(answered) if bounds[1] is None else bounds[1],
        strict=True,
    )
    levels = bounds[0]
    # Positional fields (in Prediction's order): one is built per event, and keywords cost a
    # third more.
    return [
        Prediction(
            key,
            ts,
            partition,
            offset,
            mode,
            value,
            None if mode == "forecast" else targets[e].copy(),
            step,
            received_at,
            levels,
            interval,
        )
        for key, e, mode, ts, offset, received_at, value, interval in columns
    ]
