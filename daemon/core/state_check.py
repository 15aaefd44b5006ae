"""Check a partition's stored key-state arrays against this learner before importing them. Pure.

A state-topic record verifies its own checksums, so checksums say nothing about who wrote it:
a stale replica, another model shape or a tool (DESIGN §11). The layout an import needs is
taken from this learner itself (`layout_of`: an empty store, exported), so any column added
later is checked without this module changing. What fails raises `UntrustedRecord`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_store
from daemon.core.untrusted import UntrustedRecord

# name -> (dtype, shape after the leading row or event dimension, whether it has one per key)
# Arrays of a whole partition (not per key, not per event) keep their full shape.
Layout = dict[str, tuple[np.dtype, tuple[int, ...], bool]]

# Columns a forward pass reads as they are: a NaN there would reach every later prediction of
# its key. NaN is a legitimate "unknown" in the other float columns (a target not seen yet).
_FINITE = ("states", "ahead", "last_ts", "ev_x", "ev_ts")
_FINITE_SUFFIXES = ("_mean", "_m2")
_COUNT_SUFFIX = "_count"


def layout_of(learner: OnlineLearner) -> Layout:
    """Return the arrays a partition state of this learner holds: (dtype, shape, per key).

    Two probes, with no key and with one: an array that grows with them has a row per key.
    """
    empty = learner.new_store(0)
    one = learner.new_store(0)
    one.add_all(["probe"])
    no_keys, _ = export_store(empty, {"ready": {}, "full": {}})
    a_key, _ = export_store(one, {"ready": {}, "full": {}})
    layout: Layout = {}
    for name, array in a_key.items():
        per_key = not name.startswith("ev_") and no_keys[name].shape != array.shape
        shape = array.shape[1:] if per_key or name.startswith("ev_") else array.shape
        layout[name] = (array.dtype, shape, per_key)
    return layout


def check_partition_state(
    arrays: dict[str, np.ndarray], meta: dict[str, Any], layout: Layout, partition: int
) -> None:
    """Raise `UntrustedRecord` unless the arrays and metadata fit this learner and partition.

    Args:
        arrays: from `unpack_keys` (keys already moved into `meta["keys"]`).
        meta: the state's metadata, with `partition` and `keys`.
        layout: `layout_of(learner)`.
        partition: the input partition it is being restored for.
    """
    if meta.get("partition") != partition or isinstance(meta.get("partition"), bool):
        raise UntrustedRecord(
            "wrong_partition", f"state of partition {meta.get('partition')!r} read for {partition}"
        )
    keys = meta.get("keys")
    if not isinstance(keys, list) or len(set(keys)) != len(keys):
        raise UntrustedRecord("bad_keys", "keys are not a list of distinct names")
    if set(arrays) != set(layout):
        missing, extra = sorted(set(layout) - set(arrays)), sorted(set(arrays) - set(layout))
        raise UntrustedRecord("shape", f"arrays missing {missing[:3]}, unknown {extra[:3]}")
    n_events = len(arrays["ev_key"]) if arrays["ev_key"].ndim == 1 else -1
    for name, (dtype, shape, per_key) in layout.items():
        array = arrays[name]
        if name.startswith("ev_"):
            expected = (n_events, *shape)
        else:
            expected = (len(keys), *shape) if per_key else shape
        if array.dtype != dtype or array.shape != expected:
            raise UntrustedRecord(
                "shape",
                f"{name} is {array.dtype}{list(array.shape)}, expected {dtype}{list(expected)}",
            )
        _check_values(name, array)
    _check_references(arrays, len(keys))


def _check_values(name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f":
        if np.isinf(array).any():
            raise UntrustedRecord("nonfinite", f"{name} holds an infinity")
        if (name in _FINITE or name.endswith(_FINITE_SUFFIXES)) and np.isnan(array).any():
            raise UntrustedRecord("nonfinite", f"{name} holds NaN")
    if name.endswith(_COUNT_SUFFIX) and array.size and array.min() < 0:
        raise UntrustedRecord("out_of_range", f"{name} holds a negative count")


def _check_references(arrays: dict[str, np.ndarray], n_keys: int) -> None:
    """Indices into the key rows must point at rows, each key's events side by side."""
    owners = arrays["ev_key"]
    if owners.size and (owners.min() < 0 or owners.max() >= n_keys):
        raise UntrustedRecord("out_of_range", "ev_key points past the keys")
    if owners.size > 1 and (np.diff(owners) < 0).any():
        raise UntrustedRecord("bad_events", "ev_key is not grouped by key")
    for name in ("ready_rank", "full_rank"):  # positions in a wait list; -1: not waiting
        rank = arrays[name]
        if rank.size and rank.min() < -1:
            raise UntrustedRecord("out_of_range", f"{name} below -1")
