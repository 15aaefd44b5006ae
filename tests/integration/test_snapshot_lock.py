"""Two `lstmd run` processes on one snapshot directory: the second refuses, naming the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LSTMD = [sys.executable, "-m", "daemon", "run"]
EXIT_USAGE = 2


def _env(broker, tag: str, snapshots: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMD_")}
    env.update(
        {
            "LSTMD_SNAPSHOT__DIRECTORY": str(snapshots),
            "LSTMD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "LSTMD_KAFKA__INPUT_TOPIC": f"in-{tag}",
            "LSTMD_KAFKA__PREDICTIONS_TOPIC": f"pred-{tag}",
            "LSTMD_KAFKA__DEAD_LETTER_TOPIC": f"dlq-{tag}",
            "LSTMD_KAFKA__METRICS_TOPIC": f"met-{tag}",
            "LSTMD_KAFKA__GROUP_ID": f"g-{tag}",
            "LSTMD_MODEL__UNITS": "4",
            "LSTMD_METRICS__PORT": "0",
            "LSTMD_LOG__FORMAT": "json",
        }
    )
    return env


def _wait_for_log(proc: subprocess.Popen, event: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"first daemon exited before {event!r}")
        if line.startswith("{") and json.loads(line).get("event") == event:
            return
    raise AssertionError(f"timed out waiting for {event!r}")


def test_second_process_on_the_same_directory_refuses_to_start(broker, tmp_path: Path) -> None:
    env = _env(broker, uuid.uuid4().hex[:10], tmp_path / "snapshots")
    first = subprocess.Popen(LSTMD, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_log(first, "snapshot directory locked", 60)
        second = subprocess.run(LSTMD, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == EXIT_USAGE
        refusal = [line for line in second.stderr.splitlines() if not line.startswith("{")]
        assert len(refusal) == 1, second.stderr
        assert f"pid {first.pid} on host" in refusal[0] and "snapshot.directory" in refusal[0]
        assert first.poll() is None, "the holder must keep running"
        _wait_for_log(first, "partitions assigned", 60)  # signal handlers are installed by now
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
    assert first.returncode == 0
    # Released on exit: a new process takes the directory.
    again = subprocess.Popen(LSTMD, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_log(again, "snapshot directory locked", 60)
    finally:
        again.kill()
        again.communicate()
