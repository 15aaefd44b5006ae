"""Recovery on the real broker: SIGKILL at random points (one in the middle of a snapshot write)
ends with the state of an uninterrupted run; SIGTERM commits exactly the snapshot's offsets and a
restart trains nothing twice; a damaged newest snapshot falls back to the previous one."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from daemon.edges.kafka_io import (
    client_options,
    committed_offsets,
    ensure_topics,
    produce_values,
    read_all,
)
from daemon.persist.checkpointing import LEARNER_META, WEIGHTS, load_npz, store_file
from daemon.persist.snapshots import SnapshotStore
from daemon.service.app import build_daemon
from daemon.settings import KafkaSettings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

KEYS = [f"meter-{i}" for i in range(9)]  # 9 keys sharing 4 rows per train step
DAYS = 140
EVENTS = len(KEYS) * DAYS


def _messages() -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(11)
    out = []
    for day in range(DAYS):
        for k, key in enumerate(KEYS):
            level = 10.0 ** (k % 3 + 1)
            value = level * (1 + 0.3 * np.sin(day / 3 + k)) + rng.normal(0, level / 20)
            event = {"key": key, "ts": 1_700_000_000 + 3600 * day, "features": [value, day % 7]}
            if day == 70 and k == 2:
                event["reset"] = True
            out.append((key.encode(), json.dumps(event).encode()))
    return out


class Stream:
    """One input topic, and per daemon run its own predictions topic, group and snapshots."""

    def __init__(self, broker, tmp_path: Path) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.input = f"in-{self.tag}"
        self.options = client_options(KafkaSettings(), broker.bootstrap)
        self.bootstrap = broker.bootstrap
        self.tmp = tmp_path
        ensure_topics(self.options, [self.input])

    def env(self, run: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMD_")}
        env.update(
            LSTMD_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
            LSTMD_KAFKA__INPUT_TOPIC=self.input,
            LSTMD_KAFKA__PREDICTIONS_TOPIC=f"pred-{run}-{self.tag}",
            LSTMD_KAFKA__DEAD_LETTER_TOPIC=f"dlq-{run}-{self.tag}",
            LSTMD_KAFKA__METRICS_TOPIC=f"met-{run}-{self.tag}",
            LSTMD_KAFKA__GROUP_ID=f"g-{run}-{self.tag}",
            LSTMD_KAFKA__MAX_POLL_RECORDS="40",
            LSTMD_MODEL__N_FEATURES="2",
            LSTMD_MODEL__UNITS="8",
            LSTMD_MODEL__BATCH_SIZE="4",
            LSTMD_MODEL__WINDOW="4",
            LSTMD_MODEL__DETERMINISTIC="true",
            LSTMD_STREAM__MAX_BATCH_WAIT_MS="0",
            LSTMD_SNAPSHOT__DIRECTORY=str(self.tmp / run),
            LSTMD_SNAPSHOT__EVERY_STEPS="3",
            LSTMD_SNAPSHOT__EVERY_S="0",
            LSTMD_METRICS__PORT="0",
            LSTMD_LOG__FORMAT="json",
        )
        env.update(extra)
        return env

    def start(self, run: str, **extra: str) -> subprocess.Popen:
        with (self.tmp / f"{run}-{time.monotonic_ns()}.log").open("w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"],
                env=self.env(run, **extra),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def predicted_offsets(self, run: str) -> set[int]:
        records = read_all(self.options, f"pred-{run}-{self.tag}", idle_s=0.5)
        return {json.loads(r.value)["source_offset"] for r in records}

    def wait_all_predicted(self, run: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.predicted_offsets(run)) >= EVENTS:
                return
            time.sleep(0.5)
        raise AssertionError(f"{run}: not every event was predicted within {timeout_s} s")


def _stop(proc: subprocess.Popen, timeout_s: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout_s)


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def _final_state(directory: Path) -> dict:
    info, _ = SnapshotStore(directory, keep=1).newest_valid({})
    assert info is not None, f"no valid snapshot in {directory}"
    meta = json.loads((info.path / LEARNER_META).read_text())
    arrays = load_npz(info.path / store_file(0))
    with h5py.File(info.path / WEIGHTS, "r") as weights:
        tensors = {}
        weights.visititems(
            lambda name, item: (
                tensors.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    keys = {
        key: {
            "states": arrays["states"][i],
            "ahead": arrays["ahead"][i],
            "mean": arrays["fstat_mean"][i],
            "m2": arrays["fstat_m2"][i],
            "count": arrays["fstat_count"][i],
        }
        for i, key in enumerate(meta["partitions"]["0"]["keys"])
    }
    return {"info": info, "meta": meta, "weights": tensors, "keys": keys, "arrays": arrays}


def _assert_same_state(got: dict, want: dict) -> None:
    assert got["info"].offsets == want["info"].offsets == {0: EVENTS}
    assert got["meta"]["step"] == want["meta"]["step"] > 0
    assert got["meta"]["trained_events"] == want["meta"]["trained_events"]
    assert set(got["weights"]) == set(want["weights"]) and want["weights"]
    for name, value in want["weights"].items():
        np.testing.assert_allclose(got["weights"][name], value, atol=1e-6, err_msg=name)
    assert set(got["keys"]) == set(want["keys"]) == set(KEYS)
    for key, values in want["keys"].items():
        for field, value in values.items():
            np.testing.assert_allclose(got["keys"][key][field], value, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def stream(broker, tmp_path_factory):
    stream = Stream(broker, tmp_path_factory.mktemp("recovery"))
    produce_values(stream.options, stream.input, _messages())
    reference = stream.start("reference")
    try:
        stream.wait_all_predicted("reference")
    finally:
        assert _stop(reference) == 0
    stream.reference = _final_state(stream.tmp / "reference")
    return stream


def test_reference_run_accounts_for_every_event(stream):
    meta, arrays = stream.reference["meta"], stream.reference["arrays"]
    buffered = len(arrays["ev_key"])
    assert meta["trained_events"] + buffered + meta["untrained"] == EVENTS
    assert meta["resets"] == {"event_flag": 1}


def _snapshots_written(directory: Path) -> int:
    """Count snapshot writes so far, from the step numbers (old ones are pruned)."""
    steps = (
        [int(p.name.split("-")[1]) for p in directory.glob("snap-*")] if directory.is_dir() else []
    )
    return max(steps, default=0)


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# Each snapshot write sleeps this long before its rename, which stretches a run over several
# seconds: kills and stops land in the middle of the stream, not after it.
SLOW = {"LSTMD_SNAPSHOT__PAUSE_BEFORE_RENAME_S": "0.2"}


def test_sigkill_at_random_points_ends_with_the_uninterrupted_state(stream):
    rng = random.Random(int(os.environ.get("LSTMD_TEST_SEED", "20261121")))
    snapshots = stream.tmp / "crash"
    for _ in range(2):
        proc = stream.start("crash", **SLOW)
        reached = _snapshots_written(snapshots) + rng.randint(3, 12)  # steps into this run
        _wait_until(lambda r=reached: _snapshots_written(snapshots) >= r, 120, "progress")
        time.sleep(rng.uniform(0.0, 0.3))
        _kill(proc)
    # A slow write leaves a wide window: kill while the snapshot is half on disk.
    proc = stream.start("crash", LSTMD_SNAPSHOT__PAUSE_BEFORE_RENAME_S="3")
    _wait_until(
        lambda: any(p.name.startswith(".tmp-") for p in snapshots.iterdir()), 120, "a write"
    )
    time.sleep(rng.uniform(0.0, 2.0))
    _kill(proc)
    assert any(p.name.startswith(".tmp-") for p in snapshots.iterdir())

    proc = stream.start("crash")
    try:
        stream.wait_all_predicted("crash")
    finally:
        assert _stop(proc) == 0
    _assert_same_state(_final_state(snapshots), stream.reference)
    assert stream.predicted_offsets("crash") == set(range(EVENTS))


def test_sigterm_commits_the_snapshot_offsets_and_a_restart_trains_nothing_twice(stream):
    directory = stream.tmp / "graceful"
    proc = stream.start("graceful", **SLOW)
    _wait_until(lambda: _snapshots_written(directory) >= 6, 120, "progress")
    started = time.monotonic()
    assert _stop(proc) == 0
    assert time.monotonic() - started < 60  # within the drain timeout
    stopped = _final_state(directory)
    committed = committed_offsets(stream.options, f"g-graceful-{stream.tag}", stream.input)
    assert committed == stopped["info"].offsets
    assert 0 < stopped["info"].offsets[0] < EVENTS  # it really stopped mid-stream

    proc = stream.start("graceful")
    try:
        stream.wait_all_predicted("graceful")
    finally:
        assert _stop(proc) == 0
    final = _final_state(directory)
    _assert_same_state(final, stream.reference)
    assert final["meta"]["trained_events"] == stream.reference["meta"]["trained_events"]


def _truncate(path: Path) -> None:
    file = path / WEIGHTS
    file.write_bytes(file.read_bytes()[:100])


def _flip(path: Path) -> None:
    file = path / store_file(0)
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _missing(path: Path) -> None:
    (path / LEARNER_META).unlink()


def _version(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1  # the slot-table format of lstmd 0.1
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_truncate, _flip, _missing])
def test_damaged_newest_snapshot_falls_back_with_a_metric_and_a_log_line(
    stream, damage, tmp_path, caplog
):
    source = sorted(p for p in (stream.tmp / "reference").iterdir() if p.name.startswith("snap-"))
    assert len(source) >= 2
    directory = tmp_path / "snaps"
    directory.mkdir()
    for path in source[-2:]:
        subprocess.run(["cp", "-r", str(path), str(directory)], check=True)
    older, newest = sorted(directory.iterdir())
    damage(newest)
    settings = _settings_from_env(stream.env("damage", LSTMD_SNAPSHOT__DIRECTORY=str(directory)))
    with caplog.at_level(logging.INFO):
        daemon = build_daemon(settings, stream.options, serve_http=False)
    try:
        older_step = json.loads((older / "manifest.json").read_text())["step"]
        assert daemon.learner.step == older_step
        assert daemon.metrics.registry.get_sample_value("lstmd_snapshot_fallbacks_total") == 1
        messages = [r.getMessage() for r in caplog.records]
        assert "snapshot damaged, skipped" in messages
        assert "fell back to an older snapshot" in messages
    finally:
        daemon.close()


def _settings_from_env(env: dict[str, str]):
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _copy_newest_reference_snapshot(stream, tmp_path: Path, damage) -> Path:
    """Copy the reference run's newest snapshot into a new directory and damage it."""
    directory = tmp_path / "snaps"
    directory.mkdir()
    newest = sorted(p for p in (stream.tmp / "reference").iterdir() if p.name.startswith("snap-"))
    subprocess.run(["cp", "-r", str(newest[-1]), str(directory)], check=True)
    damage(next(directory.iterdir()))
    return directory


def _run_daemon(env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "daemon", "run"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_no_valid_snapshot_refuses_to_start_unless_start_fresh(stream, tmp_path):
    directory = _copy_newest_reference_snapshot(stream, tmp_path, _missing)
    out = _run_daemon(stream.env("fresh", LSTMD_SNAPSHOT__DIRECTORY=str(directory)))
    assert out.returncode == 2
    assert "no valid snapshot" in out.stderr and "start_fresh" in out.stderr
    env_units = stream.env(
        "units", LSTMD_SNAPSHOT__DIRECTORY=str(stream.tmp / "reference"), LSTMD_MODEL__UNITS="16"
    )
    out = _run_daemon(env_units)
    assert out.returncode == 2 and "model.units=8 (settings say 16)" in out.stderr


def test_snapshot_of_another_format_version_is_refused_with_one_line(stream, tmp_path):
    directory = _copy_newest_reference_snapshot(stream, tmp_path, _version)
    out = _run_daemon(stream.env("version", LSTMD_SNAPSHOT__DIRECTORY=str(directory)))
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "format version" in line]
    assert (
        len(lines) == 1 and "format version 1" in lines[0] and "reads format version 2" in lines[0]
    )


def test_snapshots_list_and_export_from_the_command_line(stream, tmp_path):
    env = stream.env("cli", LSTMD_SNAPSHOT__DIRECTORY=str(stream.tmp / "reference"))
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "snapshots", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and all(row["valid"] for row in rows)
    assert rows[-1]["offsets"] == {"0": EVENTS} and rows[-1]["step"] > 0
    target = tmp_path / "model.keras"
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "export", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert target.stat().st_size > 0


def test_producing_while_the_daemon_runs_is_answered_in_full(stream, broker):
    """Events that arrive while the daemon runs (not a backlog) are all answered."""
    tag = uuid.uuid4().hex[:6]
    topic = f"live-{tag}"
    ensure_topics(stream.options, [topic])
    proc = stream.start(f"live{tag}", LSTMD_KAFKA__INPUT_TOPIC=topic)
    messages = _messages()[:600]

    def trickle() -> None:
        for start in range(0, len(messages), 60):
            produce_values(stream.options, topic, messages[start : start + 60])
            time.sleep(0.2)

    feeder = threading.Thread(target=trickle)
    feeder.start()
    feeder.join()
    try:
        deadline = time.monotonic() + 90
        while len(stream.predicted_offsets(f"live{tag}")) < len(messages):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        assert _stop(proc) == 0
