"""Snapshot files: atomic write, verification of every kind of damage, retention, fallback."""

import json

import numpy as np
import pytest

from daemon.persist.snapshots import (
    FORMAT_VERSION,
    FormatMismatch,
    ShapeMismatch,
    SnapshotStore,
    shape_mismatch,
)

SHAPE = {"units": 8, "target_index": (0,)}


def _write(store, step, value=1.0, offsets=None):
    def arrays(path):
        with path.open("wb") as handle:
            np.savez(handle, a=np.full(100, value))

    def text(path):
        path.write_text(json.dumps({"step": step}))

    return store.write(step, offsets or {0: step * 10}, SHAPE, {"a.npz": arrays, "b.json": text})


def test_write_is_listed_verified_and_loadable(tmp_path):
    store = SnapshotStore(tmp_path, keep=3)
    info = _write(store, 5)
    assert info.valid and info.offsets == {0: 50} and info.step == 5
    [listed] = store.list()
    assert listed.valid and listed.snapshot_id == info.snapshot_id and listed.size_bytes > 0
    with np.load(listed.path / "a.npz", allow_pickle=False) as data:
        assert data["a"][0] == 1.0
    assert not list(tmp_path.glob(".tmp-*"))


def test_newest_n_are_kept(tmp_path):
    store = SnapshotStore(tmp_path, keep=2)
    for step in range(1, 5):
        _write(store, step)
    assert [info.step for info in store.list()] == [3, 4]


def _corrupt_truncate(path):
    file = path / "a.npz"
    file.write_bytes(file.read_bytes()[:50])


def _corrupt_flip(path):
    file = path / "a.npz"
    data = bytearray(file.read_bytes())
    data[-10] ^= 0xFF
    file.write_bytes(bytes(data))


def _corrupt_missing(path):
    (path / "b.json").unlink()


def _corrupt_version(path):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))


def _corrupt_manifest(path):
    (path / "manifest.json").write_text("{trunc")


def test_newest_in_another_format_version_is_refused_naming_both_versions(tmp_path):
    store = SnapshotStore(tmp_path, keep=3)
    _write(store, 1)
    newest = _write(store, 2)
    _corrupt_version(newest.path)
    with pytest.raises(FormatMismatch, match=rf"format version {FORMAT_VERSION + 1}.*reads"):
        store.newest_valid(SHAPE)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_corrupt_truncate, "bytes"),
        (_corrupt_flip, "checksum"),
        (_corrupt_missing, "missing"),
        (_corrupt_manifest, "manifest"),
    ],
)
def test_damaged_newest_is_skipped_for_the_previous_one(tmp_path, damage, problem):
    store = SnapshotStore(tmp_path, keep=3)
    _write(store, 1)
    newest = _write(store, 2)
    damage(newest.path)
    info, skipped = store.newest_valid(SHAPE)
    assert info.step == 1
    assert skipped[0][0] == newest.snapshot_id and problem in skipped[0][1]


def test_nothing_valid_returns_none_with_reasons(tmp_path):
    store = SnapshotStore(tmp_path, keep=3)
    _corrupt_missing(_write(store, 1).path)
    info, skipped = store.newest_valid(SHAPE)
    assert info is None and len(skipped) == 1
    assert store.newest_valid(SHAPE)[0] is None  # asked again: still nothing, still no crash
    assert SnapshotStore(tmp_path / "empty", keep=1).newest_valid(SHAPE) == (None, [])


def test_a_crash_mid_write_leaves_no_snapshot_and_is_cleaned(tmp_path):
    store = SnapshotStore(tmp_path, keep=3)
    _write(store, 1)
    partial = tmp_path / ".tmp-snap-000000000002-1"
    partial.mkdir()
    (partial / "a.npz").write_bytes(b"half")
    assert [i.step for i in store.list()] == [1]
    _write(store, 3)
    assert not partial.exists()


def test_retention_never_deletes_the_last_good_before_a_new_one_is_durable(tmp_path):
    store = SnapshotStore(tmp_path, keep=1)
    good = _write(store, 1)

    def failing(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.write(2, {0: 20}, SHAPE, {"a.npz": failing})
    assert [i.snapshot_id for i in store.list()] == [good.snapshot_id]


def test_other_model_shape_is_refused_naming_the_setting(tmp_path):
    store = SnapshotStore(tmp_path, keep=3)
    _write(store, 1)
    with pytest.raises(ShapeMismatch, match=r"model.units=8 \(settings say 16\)"):
        store.newest_valid({"units": 16, "target_index": (0,)})
    assert shape_mismatch({"target_index": [0]}, {"target_index": (0,)}) == ""


def test_snapshots_are_private_to_the_daemons_user(tmp_path):
    info = _write(SnapshotStore(tmp_path / "snaps", keep=3), 1)
    assert (info.path.stat().st_mode & 0o777) == 0o700
    assert {f.stat().st_mode & 0o777 for f in info.path.iterdir()} == {0o600}


def test_a_manifest_naming_a_file_outside_its_snapshot_is_refused(tmp_path):
    import json

    store = SnapshotStore(tmp_path, keep=3)
    info = _write(store, 1)
    outside = tmp_path / "elsewhere.npz"
    outside.write_bytes(b"x")
    manifest = json.loads((info.path / "manifest.json").read_text())
    manifest["files"] = {str(outside): {"sha256": "0" * 64, "bytes": 1}}
    (info.path / "manifest.json").write_text(json.dumps(manifest))
    checked = store.inspect(info.path)
    assert not checked.valid and "not a plain name" in checked.problem


def test_writing_a_snapshot_does_not_hash_the_kept_ones_again(tmp_path, monkeypatch):
    from daemon.persist import snapshots

    store = SnapshotStore(tmp_path, keep=3)
    for step in range(3):
        _write(store, step)
    hashed: list = []
    real = snapshots._sha256
    monkeypatch.setattr(snapshots, "_sha256", lambda path: hashed.append(path) or real(path))
    newest = _write(store, 3)
    assert {p.parent for p in hashed} <= {tmp_path / f".tmp-{newest.snapshot_id}"}
