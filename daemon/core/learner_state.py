"""The learner's state as plain arrays and JSON, and back: the snapshot's bookkeeping. Pure.

Everything that decides future training is saved exactly: the slot table (which key holds which
slot, recency order, free slots, parked order), every key's LSTM rows, normalisation statistics
and last values, every buffered event, the step and reset epoch. Restoring it into a fresh learner
gives bit-identical training from the same events on.
"""

from __future__ import annotations

import gc
import math
from collections import Counter
from typing import Any

import numpy as np

from daemon.core.learner import OnlineLearner
from daemon.core.scaling import RunningStats
from daemon.core.slots import KeyState, Pending

Arrays = dict[str, np.ndarray]


def _ordered_keys(learner: OnlineLearner) -> list[KeyState]:
    table = learner.table
    bound = [table.rows[table.slot_of[key]] for key in table.recency_order()]
    return bound + list(table.parked.values())


def _optional(values: list[np.ndarray | None], size: int, dtype: type) -> tuple[np.ndarray, ...]:
    present = np.array([v is not None for v in values], dtype=bool)
    filled = np.zeros((len(values), size), dtype=dtype)
    for i, value in enumerate(values):
        if value is not None:
            filled[i] = value
    return filled, present


def export_learner(learner: OnlineLearner) -> tuple[Arrays, dict[str, Any]]:
    """Return (arrays for keys.npz/buffer.npz, JSON-able metadata) describing the learner."""
    table = learner.table
    states = _ordered_keys(learner)
    n_targets = table.n_targets
    rows = np.zeros((len(states), *table.states.shape[:2], table.states.shape[3]), np.float32)
    slots = np.full(len(states), -1, np.int64)
    for i, state in enumerate(states):
        slot = table.slot_of.get(state.key)
        if slot is None:
            rows[i] = state.parked_state
        else:
            slots[i] = slot
            rows[i] = table.states[:, :, slot, :]
    last_target, has_last_target = _optional([s.last_target for s in states], n_targets, np.float64)
    arrays: Arrays = {
        "key_slot": slots,
        "key_rows": rows,
        "key_reset_epoch": np.array([s.reset_epoch for s in states], np.int64),
        "key_last_ts": np.array([np.nan if s.last_ts is None else s.last_ts for s in states]),
        "key_last_target": last_target,
        "key_has_last_target": has_last_target,
        "free_slots": np.array(table.free_slots(), np.int64),
    }
    for prefix, getter in (
        ("fstat", lambda s: s.feature_stats),
        ("tstat", lambda s: s.target_stats),
    ):
        stats = [getter(s) for s in states]
        width = table.n_features if prefix == "fstat" else n_targets
        arrays[f"{prefix}_count"] = np.array([st.count for st in stats], np.int64)
        arrays[f"{prefix}_mean"] = np.array([st.mean for st in stats]).reshape(-1, width)
        arrays[f"{prefix}_m2"] = np.array([st.m2 for st in stats]).reshape(-1, width)
    diffs = [s.diff_stats or RunningStats(n_targets) for s in states]
    arrays["dstat_count"] = np.array([d.count for d in diffs], np.int64)
    arrays["dstat_mean"] = np.array([d.mean for d in diffs]).reshape(-1, n_targets)
    arrays["dstat_m2"] = np.array([d.m2 for d in diffs]).reshape(-1, n_targets)
    level, has_level = _optional([s.last_level for s in states], n_targets, np.float64)
    arrays["key_last_level"], arrays["key_has_last_level"] = level, has_level
    arrays.update(_export_buffers(states, table.n_features, n_targets))
    meta = {
        "keys": [s.key for s in states],
        "step": learner.step,
        "last_loss": learner.last_loss,
        "resets": dict(learner.resets),
        "untrained": learner.untrained,
        "trained_events": learner.trained_events,
        "epoch": table.epoch,
        "evictions": table.evictions,
        "parked_dropped": table.parked_dropped,
        "prequential": [
            learner.prequential.model_abs,
            learner.prequential.naive_abs,
            learner.prequential.count,
        ],
    }
    return arrays, meta


def _export_buffers(states: list[KeyState], n_features: int, n_targets: int) -> Arrays:
    pending = [(i, p) for i, s in enumerate(states) for p in s.buffer]
    items = [p for _, p in pending]
    y, has_y = _optional([p.y for p in items], n_targets, np.float32)
    target, has_target = _optional([p.target for p in items], n_targets, np.float64)
    naive, has_naive = _optional([p.naive for p in items], n_targets, np.float64)
    prediction, has_prediction = _optional([p.prediction for p in items], n_targets, np.float64)
    return {
        "buf_key": np.array([i for i, _ in pending], np.int64),
        "buf_partition": np.array([p.partition for p in items], np.int64),
        "buf_offset": np.array([p.offset for p in items], np.int64),
        "buf_ts": np.array([p.ts for p in items], np.float64),
        "buf_x": np.array([p.x for p in items], np.float32).reshape(-1, n_features),
        "buf_location": np.array([p.location for p in items], np.float64).reshape(-1, n_targets),
        "buf_spread": np.array([p.spread for p in items], np.float64).reshape(-1, n_targets),
        "buf_forecast_mode": np.array([p.forecast_mode for p in items], bool),
        "buf_starts_sequence": np.array([p.starts_sequence for p in items], bool),
        "buf_y": y,
        "buf_has_y": has_y,
        "buf_target": target,
        "buf_has_target": has_target,
        "buf_naive": naive,
        "buf_has_naive": has_naive,
        "buf_prediction": prediction,
        "buf_has_prediction": has_prediction,
    }


def import_learner(
    learner: OnlineLearner, arrays: Arrays, meta: dict[str, Any], now: float
) -> None:
    """Load what `export_learner` produced into a fresh learner of the same shape.

    The loaded arrays are adopted, not copied: their rows become the keys' own state.
    """
    table = learner.table
    # Hundreds of thousands of small objects are created here, none of them garbage; the cyclic
    # collector would walk them again and again (measured: a third of the restore time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        states = _key_states(arrays, meta["keys"])
        _import_buffers(arrays, states, now)
    finally:
        if collecting:
            gc.enable()
    table.restore(
        bound=[
            (int(arrays["key_slot"][i]), s)
            for i, s in enumerate(states)
            if arrays["key_slot"][i] >= 0
        ],
        parked=[s for i, s in enumerate(states) if arrays["key_slot"][i] < 0],
        rows=arrays["key_rows"],
        slots=arrays["key_slot"],
        free=[int(v) for v in arrays["free_slots"]],
        epoch=int(meta["epoch"]),
        evictions=int(meta["evictions"]),
        parked_dropped=int(meta["parked_dropped"]),
    )
    learner.step = int(meta["step"])
    learner.last_loss = float(meta["last_loss"])
    learner.resets = Counter(meta["resets"])
    learner.untrained = int(meta["untrained"])
    learner.trained_events = int(meta["trained_events"])
    model_abs, naive_abs, count = meta["prequential"]
    learner.prequential.model_abs = float(model_abs)
    learner.prequential.naive_abs = float(naive_abs)
    learner.prequential.count = int(count)
    learner.after_restore()


def _key_states(arrays: Arrays, keys: list[str]) -> list[KeyState]:
    # Scalars as Python lists and vectors as row views: indexing numpy per key is the slow part.
    f_count, f_mean, f_m2 = arrays["fstat_count"].tolist(), arrays["fstat_mean"], arrays["fstat_m2"]
    t_count, t_mean, t_m2 = arrays["tstat_count"].tolist(), arrays["tstat_mean"], arrays["tstat_m2"]
    last_ts = arrays["key_last_ts"].tolist()
    epochs = arrays["key_reset_epoch"].tolist()
    has_last = arrays["key_has_last_target"].tolist()
    last_target = arrays["key_last_target"]
    if "dstat_count" not in arrays:  # written before difference scaling existed
        n, width = len(keys), arrays["tstat_mean"].shape[1]
        arrays = {
            **arrays,
            "dstat_count": np.zeros(n, np.int64),
            "dstat_mean": np.zeros((n, width)),
            "dstat_m2": np.zeros((n, width)),
            "key_has_last_level": np.zeros(n, bool),
            "key_last_level": np.zeros((n, width)),
        }
    d_count, d_mean, d_m2 = arrays["dstat_count"].tolist(), arrays["dstat_mean"], arrays["dstat_m2"]
    has_level, last_level = arrays["key_has_last_level"].tolist(), arrays["key_last_level"]
    return [
        KeyState(
            key=key,
            feature_stats=RunningStats.from_arrays(f_count[i], f_mean[i], f_m2[i]),
            target_stats=RunningStats.from_arrays(t_count[i], t_mean[i], t_m2[i]),
            last_ts=None if math.isnan(last_ts[i]) else last_ts[i],
            last_target=last_target[i] if has_last[i] else None,
            reset_epoch=epochs[i],
            last_level=last_level[i] if has_level[i] else None,
            diff_stats=RunningStats.from_arrays(d_count[i], d_mean[i], d_m2[i]),
        )
        for i, key in enumerate(keys)
    ]


def _import_buffers(arrays: Arrays, states: list[KeyState], now: float) -> None:
    def optional(name: str) -> list[np.ndarray | None]:
        values, present = arrays[f"buf_{name}"], arrays[f"buf_has_{name}"].tolist()
        return [values[j] if has else None for j, has in enumerate(present)]

    y, target, naive, prediction = (optional(n) for n in ("y", "target", "naive", "prediction"))
    columns = zip(
        arrays["buf_key"].tolist(),
        arrays["buf_partition"].tolist(),
        arrays["buf_offset"].tolist(),
        arrays["buf_ts"].tolist(),
        arrays["buf_forecast_mode"].tolist(),
        arrays["buf_starts_sequence"].tolist(),
        strict=True,
    )
    x, location, spread = arrays["buf_x"], arrays["buf_location"], arrays["buf_spread"]
    for j, (key, partition, offset, ts, forecast, starts) in enumerate(columns):
        states[key].buffer.append(
            Pending(
                partition=partition,
                offset=offset,
                ts=ts,
                x=x[j],
                naive=naive[j],
                location=location[j],
                spread=spread[j],
                forecast_mode=forecast,
                starts_sequence=starts,
                received_at=now,
                y=y[j],
                target=target[j],
                prediction=prediction[j],
            )
        )
