"""Checkpointing: save and restore the model, the optimizer and the learner as one snapshot.

The model is injected (anything with `save_weights`, `load_weights`, `optimizer_state` and
`set_optimizer_state`), so this module imports no TensorFlow; the files go through
`SnapshotStore`, which makes the write atomic and verifies it on the way back.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import export_learner, import_learner
from daemon.persist.snapshots import SnapshotInfo, SnapshotStore
from daemon.settings import ModelSettings

log = logging.getLogger("lstmd.checkpointing")

WEIGHTS = "model.weights.h5"  # the Keras weights format
OPTIMIZER = "optimizer.npz"
LEARNER_META = "learner.json"


def store_file(partition: int) -> str:
    """Return the file name of one input partition's key-state store in a snapshot."""
    return f"store-{partition}.npz"


class CheckpointModel(Protocol):
    """What checkpointing needs from the model (see `daemon.model.lstm.StatefulLSTM`)."""

    def get_weights(self) -> list[np.ndarray]: ...
    def set_weights(self, weights: list[np.ndarray]) -> None: ...
    def save_weights(self, path: Path) -> None: ...
    def load_weights(self, path: Path) -> None: ...
    def optimizer_state(self) -> dict[str, np.ndarray]: ...
    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None: ...


def _write_json(path: Path, meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(meta), encoding="utf-8")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays uncompressed: a snapshot is written often and must be quick."""
    with path.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` file, refusing pickled objects."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class Checkpointer:
    """Write and read whole-daemon snapshots: weights, optimizer, learner state, offsets."""

    def __init__(
        self,
        store: SnapshotStore,
        learner: OnlineLearner,
        model: CheckpointModel,
        model_settings: ModelSettings,
    ) -> None:
        self.store = store
        self._learner = learner
        self._model = model
        # The model's inputs include the derived features: other derived-feature settings make
        # a snapshot as unusable as another model shape.
        self._shape = {**model_settings.shape(), "inputs": learner.input_names}
        # The extra fields of the snapshot last loaded (see `save`).
        self.extra: dict[str, Any] = {}

    def save(self, offsets: dict[int, int], extra: dict[str, Any] | None = None) -> SnapshotInfo:
        """Write one snapshot of the current state, reflecting `offsets` (partition → next).

        Args:
            offsets: per input partition, the next offset to read.
            extra: JSON-able fields kept in the learner metadata (e.g. `weights_version`, the
                averaged weights this state holds); `meta()` reads them back.
        """
        collecting = gc.isenabled()
        gc.disable()  # the export builds large lists of small objects, none of them garbage
        try:
            parts, meta = export_learner(self._learner)
        finally:
            if collecting:
                gc.enable()
        optimizer = self._model.optimizer_state()
        names = sorted(optimizer)
        meta["optimizer_variables"] = names
        meta["extra"] = dict(extra or {})
        meta["partitions"] = {str(p): part_meta for p, (_, part_meta) in parts.items()}
        writers: dict[str, Callable[[Path], None]] = {
            WEIGHTS: self._model.save_weights,
            OPTIMIZER: lambda p: _save_npz(p, {f"v{i}": optimizer[n] for i, n in enumerate(names)}),
            LEARNER_META: functools.partial(_write_json, meta=meta),
        }
        for partition, (arrays, _) in parts.items():
            writers[store_file(partition)] = functools.partial(_save_npz, arrays=arrays)
        return self.store.write(self._learner.step, offsets, self._shape, writers)

    def rollback(self) -> SnapshotInfo | None:
        """Replace the learner's and the model's state by the newest valid snapshot's.

        Returns:
            The snapshot rolled back to, or None when there is none (nothing is changed then).
        """
        info, _ = self.store.newest_valid(self._shape)
        if info is None:
            return None
        self._learner.reset()
        restored, _ = self.restore()
        return restored

    def restore(self) -> tuple[SnapshotInfo | None, list[tuple[str, str]]]:
        """Load the newest usable snapshot into the model and the learner.

        A snapshot that verifies but cannot be loaded (written by an incompatible version, say)
        is skipped like a damaged one, and nothing of it stays loaded.

        Returns:
            (the snapshot loaded or None, [(id, problem)] of newer snapshots skipped).

        Raises:
            ShapeMismatch: the newest valid snapshot has other model-shape settings.
        """
        initial = self._model.get_weights(), self._model.optimizer_state()
        skipped: list[tuple[str, str]] = []
        for info in self.store.candidates(self._shape, skipped):
            try:
                self._load(info)
            except (KeyError, ValueError, TypeError, OSError) as exc:
                self.store.skip(skipped, info.snapshot_id, f"cannot be loaded: {exc!r}"[:300])
                self._learner.reset()
                self._model.set_weights(initial[0])
                self._model.set_optimizer_state(initial[1])
                continue
            return info, skipped
        return None, skipped

    def _load(self, info: SnapshotInfo) -> None:
        meta = json.loads((info.path / LEARNER_META).read_text(encoding="utf-8"))
        saved = load_npz(info.path / OPTIMIZER)
        parts = {
            int(p): (load_npz(info.path / store_file(int(p))), part_meta)
            for p, part_meta in meta.pop("partitions").items()
        }
        names: list[str] = meta.pop("optimizer_variables")
        self.extra = dict(meta.pop("extra", {}))
        optimizer = {n: saved[f"v{i}"] for i, n in enumerate(names)}
        self._model.load_weights(info.path / WEIGHTS)
        self._model.set_optimizer_state(optimizer)
        import_learner(self._learner, parts, meta, time.monotonic())


def describe(info: SnapshotInfo) -> dict[str, Any]:
    """Return a snapshot's listing row: id, step, time, offsets, size, validity."""
    return {
        "id": info.snapshot_id,
        "step": info.step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.created))
        if info.created
        else None,
        "offsets": info.offsets,
        "bytes": info.size_bytes,
        "valid": info.valid,
        "problem": info.problem or None,
    }
