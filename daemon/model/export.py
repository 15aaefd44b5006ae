"""Export a snapshot's weights as a plain Keras model file."""

from __future__ import annotations

from pathlib import Path

from daemon.persist.checkpointing import WEIGHTS
from daemon.persist.snapshots import SnapshotInfo, SnapshotStore
from daemon.settings import ModelSettings


class ExportError(Exception):
    """The snapshot cannot be exported; the message says why."""


def _pick(store: SnapshotStore, snapshot_id: str) -> SnapshotInfo:
    snapshots = store.list()
    if snapshot_id == "latest":
        valid = [info for info in snapshots if info.valid]
        if not valid:
            raise ExportError(f"no valid snapshot in {store.directory}")
        return valid[-1]
    for info in snapshots:
        if info.snapshot_id == snapshot_id:
            if not info.valid:
                raise ExportError(f"snapshot {snapshot_id} is damaged: {info.problem}")
            return info
    raise ExportError(f"no snapshot {snapshot_id} in {store.directory}")


def export_snapshot(directory: Path, snapshot_id: str, out: Path) -> str:
    """Write the model of a snapshot to `out` (.keras); return the snapshot id used.

    The model is rebuilt from the shape recorded in the snapshot's manifest, so the current
    settings do not have to match it.
    """
    if out.suffix != ".keras":
        raise ExportError(f"{out} must end in .keras")
    info = _pick(SnapshotStore(directory, keep=1), snapshot_id)
    from daemon.model.environment import configure_tensorflow

    configure_tensorflow()
    from daemon.model.lstm import StatefulLSTM

    shape = dict(info.manifest["model"])
    inputs = shape.pop("inputs", None)  # the event's and the derived features, by name
    model = StatefulLSTM(ModelSettings(**shape), n_inputs=len(inputs) if inputs else None)
    model.load_weights(info.path / WEIGHTS)
    model.export(out)
    return info.snapshot_id
