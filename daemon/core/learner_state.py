"""The learner's state as plain arrays and JSON, and back: the snapshot's bookkeeping. Pure.

Everything that decides future training is saved exactly, per input partition: every key's LSTM
state and state ahead, normalisation statistics, last values and recency, every pending event,
and the order in which keys wait for a train step. Restoring it into a fresh learner gives
bit-identical training from the same events on. A partition's part (`export_store`) stands on
its own, so that a partition's state can move to another process without the others.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from daemon.core.derived import DerivedFeatures
from daemon.core.intervals import IntervalCalibrator
from daemon.core.learner import KeyRef, OnlineLearner
from daemon.core.pending import HAS_Y, NO_EVENT
from daemon.core.smoothing import SmoothedFeatures
from daemon.core.store import KeyStateStore

Arrays = dict[str, np.ndarray]

_ROW_COLUMNS = ("states", "ahead", "last_ts", "last_active")
# Columns a store allocates on first use (see KeyStateStore.mode_columns): saved as NaN when
# never used, so that the snapshot layout does not depend on the mode.
_MODE_COLUMNS = ("last_level", "last_target")
_EVENT_COLUMNS = (
    "x",
    "y",
    "target",
    "naive",
    "location",
    "spread",
    "prediction",
    "ts",
    "offset",
    "flags",
)
_STATS = {"fstat": "feature_stats", "tstat": "target_stats", "sstat": "step_stats"}


def export_store(store: KeyStateStore, ranks: dict[str, dict[int, int]]) -> tuple[Arrays, dict]:
    """Return (arrays, JSON-able metadata) of one partition's store.

    Args:
        store: the partition's store.
        ranks: {"ready": {row: position}, "full": {row: position}}: where each key waits for a
            train step, so that a restore keeps the order.
    """
    rows = store.live_rows()
    arrays: Arrays = {name: getattr(store, name)[rows] for name in _ROW_COLUMNS}
    used = store.mode_columns()
    for name in _MODE_COLUMNS:
        column = used.get(name)
        arrays[name] = (
            np.full((len(rows), store.n_targets), np.nan) if column is None else column[rows]
        )
    for prefix, attribute in _STATS.items():
        count, mean, m2 = getattr(store, attribute).to_arrays(rows)
        arrays.update({f"{prefix}_count": count, f"{prefix}_mean": mean, f"{prefix}_m2": m2})
    if store.derived is not None:
        arrays.update({f"derived_{k}": v for k, v in store.derived.take(rows).items()})
    if store.intervals is not None:
        arrays.update(store.intervals.take(rows))
    if store.smoothing is not None:
        arrays.update({f"smooth_{k}": v for k, v in store.smoothing.take(rows).items()})
    for name, rank in ranks.items():
        arrays[f"{name}_rank"] = np.array([rank.get(r, -1) for r in rows.tolist()], np.int64)
    owners: list[int] = []
    ids: list[int] = []
    for index, row in enumerate(rows.tolist()):
        queue = store.queue(row)
        ids.extend(queue)
        owners.extend([index] * len(queue))
    events = store.events
    ev = np.array(ids, np.int64)
    arrays["ev_key"] = np.array(owners, np.int64)
    for name in _EVENT_COLUMNS:
        arrays[f"ev_{name}"] = getattr(events, name)[ev]
    arrays["ev_bounds"] = events.bounds[ev]
    keys = [store.keys[r] for r in rows.tolist()]
    return arrays, {"partition": store.partition, "keys": keys}


def import_store(
    arrays: Arrays,
    meta: dict[str, Any],
    layers: int,
    units: int,
    n_inputs: int,
    n_targets: int,
    now: float,
    derived: DerivedFeatures | None = None,
    horizon: int = 1,
    intervals: IntervalCalibrator | None = None,
    smoothing: SmoothedFeatures | None = None,
) -> tuple[KeyStateStore, dict[str, list[tuple[int, int]]]]:
    """Rebuild a store from `export_store`'s output.

    Args:
        derived: empty derived-feature columns when the settings derive features (the saved
            ones are loaded into them), else None.
        horizon: H of the model; pending events' target columns are n_targets × H wide.
        intervals: empty interval trackers when the settings ask for intervals; the saved ones
            are loaded into them when they were made with the same levels (a state saved
            without them, or with other levels, leaves them to start afresh).

    Returns:
        The store and, per wait list ("ready", "full"), [(position, row)] of its keys.

    Raises:
        ValueError: the arrays do not fit the model's shape or each other.
    """
    keys: list[str] = meta["keys"]
    n = len(keys)
    capacity = 64
    while capacity < n:
        capacity *= 2
    store = KeyStateStore(
        int(meta["partition"]),
        layers,
        units,
        n_inputs,
        n_targets,
        capacity,
        derived,
        horizon,
        intervals,
        smoothing,
    )
    if arrays["states"].shape != (n, layers, 2, units):
        raise ValueError(f"states have shape {arrays['states'].shape}, expected {n} keys")
    width = arrays["ev_y"].shape[1:]
    if width != (n_targets * horizon,):
        raise ValueError(
            f"pending events hold {width} target values, this model {n_targets} x "
            f"model.horizon={horizon}: the state was made with another model.horizon"
        )
    store.add_all(keys)
    rows = np.arange(n)
    for name in _ROW_COLUMNS:
        getattr(store, name)[:n] = arrays[name]
    for name in _MODE_COLUMNS:
        if not np.isnan(arrays[name]).all():  # a column never used stays unallocated
            getattr(store, name)[:n] = arrays[name]
    for prefix, attribute in _STATS.items():
        getattr(store, attribute).put(
            rows, arrays[f"{prefix}_count"], arrays[f"{prefix}_mean"], arrays[f"{prefix}_m2"]
        )
    if derived is not None:
        saved = {k[len("derived_") :]: v for k, v in arrays.items() if k.startswith("derived_")}
        derived.put(rows, saved)
    if intervals is not None:
        intervals.put(rows, arrays)
    if smoothing is not None:
        saved = {k[len("smooth_") :]: v for k, v in arrays.items() if k.startswith("smooth_")}
        try:
            smoothing.put(rows, saved)
        except KeyError:
            raise ValueError(
                "the state holds no smoothed features: saved with other settings"
            ) from None
    _import_events(store, arrays, n, now)
    waits = {}
    for name in ("ready", "full"):
        rank = arrays[f"{name}_rank"]
        waits[name] = [(int(rank[r]), r) for r in np.flatnonzero(rank >= 0).tolist()]
    return store, waits


def _import_events(store: KeyStateStore, arrays: Arrays, n_keys: int, now: float) -> None:
    owners = arrays["ev_key"]
    count = len(owners)
    events = store.events
    if count > events.capacity:
        events._allocate(max(count, 2 * events.capacity))
    ids = np.array([events.new() for _ in range(count)], np.int64)
    for name in _EVENT_COLUMNS:
        getattr(events, name)[ids] = arrays[f"ev_{name}"]
    # The intervals published for pending events only score them; a state saved without them
    # (or with other levels) leaves them unknown, and those events' intervals go unscored.
    bounds = arrays.get("ev_bounds")
    fits = bounds is not None and bounds.shape == (count, events.bounds_width)
    events.bounds[ids] = bounds if fits else np.nan
    events.received_at[ids] = now
    if not count:
        return
    same_key_next = np.append(owners[1:] == owners[:-1], False)
    events.next[ids] = np.where(same_key_next, np.roll(ids, -1), NO_EVENT)
    first = np.append(True, owners[1:] != owners[:-1])
    last = np.append(owners[1:] != owners[:-1], True)
    store.head[owners[first]] = ids[first]
    store.tail[owners[last]] = ids[last]
    store.pending[:n_keys] = np.bincount(owners, minlength=n_keys)
    has_y = (arrays["ev_flags"] & HAS_Y).astype(bool).astype(np.int64)
    store.trainable[:n_keys] = np.bincount(owners, weights=has_y, minlength=n_keys)


def _ranks(learner: OnlineLearner, partition: int) -> dict[str, dict[int, int]]:
    ranks: dict[str, dict[int, int]] = {}
    for name, wait in (("ready", learner.ready_keys()), ("full", learner.full_keys())):
        ranks[name] = {row: i for i, (p, row) in enumerate(wait) if p == partition}
    return ranks


def export_learner(learner: OnlineLearner) -> tuple[dict[int, tuple[Arrays, dict]], dict]:
    """Return ({partition: (arrays, meta)}, learner metadata) describing the learner."""
    parts = {
        partition: export_store(store, _ranks(learner, partition))
        for partition, store in learner.stores.items()
    }
    meta = {
        "step": learner.step,
        "last_loss": learner.last_loss,
        "resets": dict(learner.resets),
        "untrained": learner.untrained,
        "trained_events": learner.trained_events,
        "stamp": learner.stamp,
        "rows_filled_total": learner.rows_filled_total,
        "prequential": [
            learner.prequential.model_abs,
            learner.prequential.naive_abs,
            learner.prequential.count,
        ],
    }
    if learner.horizon > 1:
        p = learner.prequential
        meta["prequential_steps"] = [p.step_model_abs, p.step_naive_abs, p.step_count]
    scores = learner.interval_scores
    if scores.levels:
        meta["interval_scores"] = {
            "levels": list(scores.levels),
            "covered": scores.covered,
            "score_sum": scores.score_sum,
            "count": scores.count,
        }
    return parts, meta


def _import_store_for(
    learner: OnlineLearner, arrays: dict[str, np.ndarray], meta: dict[str, Any], now: float
) -> tuple[KeyStateStore, dict[str, list[tuple[int, int]]]]:
    """Rebuild one partition's store for `learner`'s shape (see `import_store`)."""
    layers, _, _, units = learner.state_shape
    return import_store(
        arrays,
        meta,
        layers,
        units,
        learner.n_inputs,
        learner.n_targets,
        now,
        learner.new_derived(),
        learner.horizon,
        learner.new_intervals(),
        learner.new_smoothing(),
    )


def import_learner(
    learner: OnlineLearner,
    parts: dict[int, tuple[Arrays, dict]],
    meta: dict[str, Any],
    now: float,
) -> None:
    """Load what `export_learner` produced into a fresh learner of the same shape."""
    stores: dict[int, KeyStateStore] = {}
    waits: dict[str, list[tuple[int, KeyRef]]] = {"ready": [], "full": []}
    for partition, (arrays, part_meta) in parts.items():
        store, store_waits = _import_store_for(learner, arrays, part_meta, now)
        stores[partition] = store
        for name, entries in store_waits.items():
            waits[name].extend((rank, (partition, row)) for rank, row in entries)
    learner.step = int(meta["step"])
    learner.last_loss = float(meta["last_loss"])
    learner.resets = Counter(meta["resets"])
    learner.untrained = int(meta["untrained"])
    learner.trained_events = int(meta["trained_events"])
    learner.stamp = int(meta["stamp"])
    learner.rows_filled_total = int(meta["rows_filled_total"])
    model_abs, naive_abs, count = meta["prequential"]
    learner.prequential.model_abs = float(model_abs)
    learner.prequential.naive_abs = float(naive_abs)
    learner.prequential.count = int(count)
    if learner.horizon > 1:
        steps_model, steps_naive, steps_count = meta["prequential_steps"]
        learner.prequential.step_model_abs = [float(v) for v in steps_model]
        learner.prequential.step_naive_abs = [float(v) for v in steps_naive]
        learner.prequential.step_count = [int(v) for v in steps_count]
    _import_interval_scores(learner, meta.get("interval_scores"))
    learner.adopt(
        stores,
        ready=[ref for _, ref in sorted(waits["ready"])],
        full=[ref for _, ref in sorted(waits["full"])],
    )


def _import_interval_scores(learner: OnlineLearner, saved: dict[str, Any] | None) -> None:
    """Continue the since-start interval scores (when saved with the same levels)."""
    scores = learner.interval_scores
    if not saved or [float(v) for v in saved["levels"]] != list(scores.levels):
        return
    scores.covered = [int(v) for v in saved["covered"]]
    scores.score_sum = [float(v) for v in saved["score_sum"]]
    scores.count = int(saved["count"])


def export_partition(learner: OnlineLearner, partition: int) -> tuple[Arrays, dict]:
    """Return (arrays, metadata) of one input partition's store, to move it to another owner.

    Raises:
        KeyError: the learner holds no store for that partition.
    """
    return export_store(learner.stores[partition], _ranks(learner, partition))


def import_partition(learner: OnlineLearner, arrays: Arrays, meta: dict, now: float) -> int:
    """Load one partition's store (from `export_partition`) into a learner; return the partition.

    Its keys join the wait lists behind the keys already waiting, in their saved order.

    Raises:
        ValueError: the arrays do not fit this learner's model shape, or the learner already
            holds that partition.
    """
    partition = int(meta["partition"])
    if partition in learner.stores:
        raise ValueError(f"partition {partition} is already held by this learner")
    store, waits = _import_store_for(learner, arrays, meta, now)
    learner.adopt(
        {partition: store},
        ready=[(partition, row) for _, row in sorted(waits["ready"])],
        full=[(partition, row) for _, row in sorted(waits["full"])],
    )
    return partition
