"""Snapshot files: atomic write, verification, retention and loading. No Kafka, no TensorFlow.

A snapshot is a directory `snap-<step>-<unix ms>` holding data files and a `manifest.json` that
records the format version, the model shape it was made with, the consumer offsets it reflects,
and a sha256 and size per file. It is written into a hidden temporary directory, every file and
the directory are fsynced, and only then is it renamed into place, so a crash leaves either the
whole snapshot or none. Arrays are `.npz` read with `allow_pickle=False`; the rest is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("lstmd.snapshots")

FORMAT_VERSION = 2  # 2: one key-state store per input partition (was: a slot table)
MANIFEST = "manifest.json"
_PREFIX = "snap-"
_TMP_PREFIX = ".tmp-"
# A snapshot holds every stream key and its state: readable by the daemon's user only.
_DIR_MODE = 0o700
_FILE_MODE = 0o600

# Writes a file at the path it is given.
FileWriter = Callable[[Path], None]
# (snapshot id, why it was skipped) for each damaged snapshot passed over.
Skipped = list[tuple[str, str]]


class SnapshotError(Exception):
    """A snapshot cannot be used; the message says why."""


class ShapeMismatch(SnapshotError):
    """A snapshot was made with other model-shape settings; loading it would be wrong."""


class FormatMismatch(SnapshotError):
    """The newest snapshot was written in another format version than this lstmd reads."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What the manifest says about one snapshot, and whether its files verify."""

    snapshot_id: str
    path: Path
    step: int = -1
    created: float = 0.0
    offsets: dict[int, int] = field(default_factory=dict)
    size_bytes: int = 0
    valid: bool = False
    problem: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SnapshotStore:
    """The snapshot directory: write new snapshots, list, verify, load, keep the newest N."""

    def __init__(self, directory: Path, keep: int, pause_before_rename_s: float = 0.0) -> None:
        self.directory = Path(directory)
        self.keep = keep
        # Crash tests pause here so that a kill lands while a snapshot is being written.
        self._pause_s = pause_before_rename_s
        # Snapshots this store wrote or verified: pruning does not hash them again on every
        # write (it ran on the loop thread and read every kept snapshot whole).
        self._verified: set[str] = set()

    def write(
        self,
        step: int,
        offsets: Mapping[int, int],
        model_shape: Mapping[str, Any],
        writers: Mapping[str, FileWriter],
    ) -> SnapshotInfo:
        """Write one snapshot atomically, then prune old ones; return its info.

        Args:
            step: the train step the snapshot reflects.
            offsets: input partition → next offset to read, reflected by this state.
            model_shape: the settings a loader must match (compared on load).
            writers: file name → function writing that file at the given path.
        """
        self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        created = time.time()
        snapshot_id = f"{_PREFIX}{step:012d}-{int(created * 1000):013d}"
        tmp = self.directory / f"{_TMP_PREFIX}{snapshot_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=_DIR_MODE)
        files: dict[str, dict[str, Any]] = {}
        for name, writer in writers.items():
            path = tmp / name
            writer(path)
            os.chmod(path, _FILE_MODE)
            _fsync_path(path)
            files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        manifest = {
            "format_version": FORMAT_VERSION,
            "snapshot_id": snapshot_id,
            "step": step,
            "created": created,
            "offsets": {str(p): o for p, o in sorted(offsets.items())},
            "model": dict(model_shape),
            "files": files,
        }
        manifest_path = tmp / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.chmod(manifest_path, _FILE_MODE)
        _fsync_path(manifest_path)
        _fsync_path(tmp)
        if self._pause_s:
            time.sleep(self._pause_s)
        final = self.directory / snapshot_id
        os.rename(tmp, final)
        _fsync_path(self.directory)
        self._verified.add(snapshot_id)
        self._prune()
        size = sum(f["bytes"] for f in files.values())
        return SnapshotInfo(
            snapshot_id, final, step, created, dict(offsets), size, True, "", manifest
        )

    def _prune(self) -> None:
        """Delete all but the newest `keep` valid snapshots, and leftover temporaries."""
        for leftover in self.directory.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        snapshots = self._directories()
        valid = [path for path in snapshots if self._known_valid(path)]
        keep = set(valid[-self.keep :])
        for path in snapshots:
            # Damaged ones go too, but never while they are newer than the newest good one.
            if path not in keep and (not keep or path.name < max(p.name for p in keep)):
                shutil.rmtree(path, ignore_errors=True)

    def _known_valid(self, path: Path) -> bool:
        if path.name not in self._verified and self.inspect(path).valid:
            self._verified.add(path.name)
        return path.name in self._verified

    def _directories(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
        )

    def inspect(self, path: Path) -> SnapshotInfo:
        """Read a snapshot's manifest and verify every file's size and checksum."""
        snapshot_id = path.name
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return SnapshotInfo(snapshot_id, path, problem="manifest.json is missing")
        except (OSError, ValueError) as exc:
            return SnapshotInfo(snapshot_id, path, problem=f"manifest.json is unreadable: {exc}")
        try:
            info = SnapshotInfo(
                snapshot_id,
                path,
                step=int(manifest["step"]),
                created=float(manifest["created"]),
                offsets={int(p): int(o) for p, o in manifest["offsets"].items()},
                size_bytes=sum(int(f["bytes"]) for f in manifest["files"].values()),
                manifest=manifest,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return SnapshotInfo(snapshot_id, path, problem=f"manifest.json is malformed: {exc!r}")
        problem = self._verify(path, manifest)
        return SnapshotInfo(**{**info.__dict__, "valid": not problem, "problem": problem})

    @staticmethod
    def _verify(path: Path, manifest: dict[str, Any]) -> str:
        if manifest.get("format_version") != FORMAT_VERSION:
            return f"format version {manifest.get('format_version')!r} is not {FORMAT_VERSION}"
        for name, meta in manifest["files"].items():
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
                return f"file name {name!r} is not a plain name inside the snapshot"
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != meta["bytes"]:
                return f"{name} is {file.stat().st_size} bytes, manifest says {meta['bytes']}"
            if _sha256(file) != meta["sha256"]:
                return f"{name} fails its sha256 checksum"
        return ""

    def list(self) -> list[SnapshotInfo]:
        """Return every snapshot, oldest first, each verified."""
        return [self.inspect(path) for path in self._directories()]

    def newest_valid(self, model_shape: Mapping[str, Any]) -> tuple[SnapshotInfo | None, Skipped]:
        """Find the newest snapshot that verifies.

        Returns:
            (the snapshot or None, [(snapshot id, why it was skipped), ...] for newer damaged
            ones).

        Raises:
            ShapeMismatch: the newest valid snapshot was made with other model-shape settings.
        """
        skipped: Skipped = []
        for info in self.candidates(model_shape, skipped):
            return info, skipped
        return None, skipped

    def candidates(
        self, model_shape: Mapping[str, Any], skipped: Skipped
    ) -> Iterator[SnapshotInfo]:
        """Yield the snapshots that verify, newest first; log and add damaged ones to `skipped`.

        Raises:
            ShapeMismatch: the newest valid snapshot was made with other model-shape settings.
        """
        checked_shape = False
        for path in reversed(self._directories()):
            info = self.inspect(path)
            written = info.manifest.get("format_version") if info.manifest else None
            if not checked_shape and written is not None and written != FORMAT_VERSION:
                raise FormatMismatch(
                    f"snapshot {info.snapshot_id} was written in format version {written!r}; "
                    f"this lstmd reads format version {FORMAT_VERSION}"
                )
            if not info.valid:
                self.skip(skipped, info.snapshot_id, info.problem)
                continue
            if not checked_shape:
                mismatch = shape_mismatch(info.manifest.get("model", {}), model_shape)
                if mismatch:
                    raise ShapeMismatch(f"snapshot {info.snapshot_id} {mismatch}")
                checked_shape = True
            yield info

    @staticmethod
    def skip(skipped: Skipped, snapshot_id: str, problem: str) -> None:
        """Record and log a snapshot that cannot be used."""
        log.warning(
            "snapshot damaged, skipped", extra={"snapshot": snapshot_id, "problem": problem}
        )
        skipped.append((snapshot_id, problem))


# Shape settings added after snapshots were first written, with the value an older snapshot was
# made with: one from before `model.horizon` forecast one step ahead.
_SHAPE_DEFAULTS: dict[str, Any] = {"horizon": 1}


def shape_mismatch(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """Describe how two model shapes differ, or return "" when they agree."""
    saved = {**_SHAPE_DEFAULTS, **saved}
    differences = [
        f"model.{name}={saved.get(name)!r} (settings say {value!r})"
        for name, value in wanted.items()
        if _normal(saved.get(name)) != _normal(value)
    ]
    return ("was made with " + ", ".join(differences)) if differences else ""


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value
