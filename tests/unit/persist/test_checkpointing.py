"""Whole snapshots with the real model: restore gives the same weights, optimizer and training;
export gives a plain Keras file that predicts like the daemon."""

import hashlib
import json

import keras
import numpy as np
import pytest

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.model.export import export_snapshot
from daemon.model.lstm import build_model
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.snapshots import ShapeMismatch, SnapshotStore
from daemon.settings import ModelSettings, Settings, StreamSettings


def _settings(horizon=1):
    return Settings(
        model=ModelSettings(
            n_features=2,
            units=6,
            batch_size=3,
            infer_batch_size=3,
            window=3,
            deterministic=True,
            horizon=horizon,
        ),
        stream=StreamSettings(max_batch_wait_ms=0),
    )


def _parts(directory, horizon=1):
    settings = _settings(horizon)
    model = build_model(settings)
    learner = OnlineLearner(settings, model, clock=lambda: 0.0)
    return (
        model,
        learner,
        Checkpointer(SnapshotStore(directory, keep=2), learner, model, settings.model),
    )


def _events():
    rng = np.random.default_rng(3)
    return [
        Event(f"k{k}", float(day), np.array([10.0 * (k + 1) + rng.normal(), day % 7]), None)
        for day in range(12)
        for k in range(5)
    ]


def _feed(learner, events, start=0):
    for offset, event in enumerate(events, start=start):
        learner.ingest(event, int(event.key[1:]) % 2, offset)  # keyed: two partitions
    learner.end_of_poll()
    learner.take_outbox()


@pytest.mark.parametrize("horizon", [1, 3])
def test_restored_daemon_trains_to_the_same_weights_as_an_uninterrupted_one(tmp_path, horizon):
    events = _events()
    cut = 33
    straight_model, straight, _ = _parts(tmp_path / "a", horizon)
    _feed(straight, events)

    model, learner, checkpointer = _parts(tmp_path / "b", horizon)
    _feed(learner, events[:cut])
    info = checkpointer.save({0: cut, 1: cut})
    assert info.valid and info.offsets == {0: cut, 1: cut}
    assert {"store-0.npz", "store-1.npz"} <= set(info.manifest["files"])

    model2, learner2, checkpointer2 = _parts(tmp_path / "b", horizon)
    restored, skipped = checkpointer2.restore()
    assert restored.snapshot_id == info.snapshot_id and skipped == []
    for a, b in zip(model2.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for name, value in model.optimizer_state().items():
        np.testing.assert_array_equal(model2.optimizer_state()[name], value)

    _feed(learner2, events[cut:], start=cut)
    assert learner2.step == straight.step > 0
    for a, b in zip(model2.get_weights(), straight_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for key in {e.key for e in events}:
        np.testing.assert_allclose(learner2.key_state(key), straight.key_state(key), atol=1e-6)
    assert learner2.prequential.step_count == straight.prequential.step_count
    np.testing.assert_allclose(
        learner2.prequential.step_maes(), straight.prequential.step_maes(), rtol=1e-6
    )


def test_a_snapshot_of_another_horizon_is_refused_naming_it(tmp_path):
    _, learner, checkpointer = _parts(tmp_path / "snaps", horizon=3)
    _feed(learner, _events()[:20])
    checkpointer.save({0: 20, 1: 20})
    _, _, other = _parts(tmp_path / "snaps", horizon=1)
    with pytest.raises(ShapeMismatch, match=r"model\.horizon=3 \(settings say 1\)"):
        other.restore()


def test_a_snapshot_from_before_the_horizon_setting_loads_as_h_1(tmp_path):
    _, learner, checkpointer = _parts(tmp_path / "snaps")
    _feed(learner, _events()[:20])
    info = checkpointer.save({0: 20, 1: 20})
    manifest = json.loads((info.path / "manifest.json").read_text())
    del manifest["model"]["horizon"]  # as an older version wrote it
    (info.path / "manifest.json").write_text(json.dumps(manifest))
    _, fresh, fresh_checkpointer = _parts(tmp_path / "snaps")
    restored, skipped = fresh_checkpointer.restore()
    assert restored is not None and skipped == [] and fresh.step == learner.step


def test_export_loads_with_plain_keras_and_predicts_like_the_daemon(tmp_path):
    model, learner, checkpointer = _parts(tmp_path / "snaps")
    _feed(learner, _events())
    info = checkpointer.save({0: 60})
    out = tmp_path / "model.keras"
    assert export_snapshot(tmp_path / "snaps", "latest", out) == info.snapshot_id

    loaded = keras.saving.load_model(out)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, model.n_inputs)).astype(np.float32)
    mask = np.ones((3, 4), bool)
    mask[1, 2:] = False
    states = rng.normal(size=model.state_shape).astype(np.float32)
    expected, expected_states = model.infer(x, mask, states)
    outputs = loaded.predict([x, mask, states[0, 0], states[0, 1]], verbose=0)
    np.testing.assert_allclose(outputs[0][:, :2], expected[:, :2], atol=1e-5)
    np.testing.assert_allclose(outputs[0][0], expected[0], atol=1e-5)
    np.testing.assert_allclose(outputs[1], expected_states[0, 0], atol=1e-5)


def test_a_snapshot_that_verifies_but_cannot_be_loaded_is_skipped_and_nothing_stays(tmp_path):
    _, learner, checkpointer = _parts(tmp_path / "snaps")
    _feed(learner, _events()[:20])
    older = checkpointer.save({0: 20})
    _feed(learner, _events()[20:], start=20)
    newest = checkpointer.save({0: 60})
    # Written by an incompatible version: the files verify, but an array it needs is missing.
    arrays = dict(np.load(newest.path / "store-1.npz", allow_pickle=False))
    del arrays["ahead"]
    with (newest.path / "store-1.npz").open("wb") as handle:
        np.savez(handle, **arrays)
    manifest = json.loads((newest.path / "manifest.json").read_text())
    data = (newest.path / "store-1.npz").read_bytes()
    manifest["files"]["store-1.npz"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    (newest.path / "manifest.json").write_text(json.dumps(manifest))

    _, fresh, fresh_checkpointer = _parts(tmp_path / "snaps")
    info, skipped = fresh_checkpointer.restore()
    assert info.snapshot_id == older.snapshot_id
    assert skipped[0][0] == newest.snapshot_id and "cannot be loaded" in skipped[0][1]
    assert fresh.step == older.step
    assert fresh.keys_in_store() == 5 and set(fresh.stores) == {0, 1}
