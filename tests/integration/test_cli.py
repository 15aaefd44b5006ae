"""The `lstmd` command as a user runs it: version, settings, produce, run with signals, demo."""

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

from daemon.edges.kafka_io import EventSource, client_options, read_all
from daemon.settings import KafkaSettings

pytestmark = pytest.mark.integration

LSTMD = [sys.executable, "-m", "daemon"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMD_")}
    env.update(extra)
    return env


def _lstmd(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LSTMD, *args], capture_output=True, text=True, timeout=timeout, env=_env(**env)
    )


def test_version_and_help():
    from daemon import __version__

    out = _lstmd("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lstmd {__version__}"
    out = _lstmd("--help")
    assert out.returncode == 0
    for command in ("run", "demo", "produce", "check-config"):
        assert command in out.stdout


def test_check_config_masks_secrets():
    out = _lstmd(
        "check-config",
        LSTMD_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        LSTMD_KAFKA__SASL_MECHANISM="PLAIN",
        LSTMD_KAFKA__SASL_USERNAME="svc",
        LSTMD_KAFKA__SASL_PASSWORD="hunter2-secret",
        LSTMD_MODEL__UNITS="48",
    )
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)
    assert settings["model"]["units"] == 48
    assert settings["kafka"]["sasl_password"] == "**********"
    assert "hunter2-secret" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"LSTMD_MODEL__WINDOW": "0"}, "model.window"),
        ({"LSTMD_MODEL__BATCH_SIZE": "many"}, "model.batch_size"),
        ({"LSTMD_STREAM__MAX_KEYS": "-1"}, "stream.max_keys"),
        ({"LSTMD_MODEL__TARGET_INDEX": "[5]"}, "model"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line_naming_it(env, name):
    out = _lstmd("run", **env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], out.stderr


def test_unknown_key_in_toml_is_refused(tmp_path):
    config = tmp_path / "lstmd.toml"
    config.write_text("[model]\nunits = 8\nunit = 9\n")
    out = _lstmd("--config", str(config), "check-config")
    assert out.returncode == 2 and "model.unit" in out.stderr


def _write_csv(path: Path, keys: int, days: int) -> int:
    lines = ["sensor,time,temp,load"]
    for day in range(days):
        for k in range(keys):
            lines.append(f"s{k},2024-01-{day + 1:02d}T00:00:00Z,{20 + k + day % 3},{k * 1.5}")
    path.write_text("\n".join(lines) + "\n")
    return keys * days


def _topics_env(broker, tag: str, snapshot_dir: Path) -> dict[str, str]:
    return {
        "LSTMD_SNAPSHOT__DIRECTORY": str(snapshot_dir),
        "LSTMD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "LSTMD_KAFKA__INPUT_TOPIC": f"in-{tag}",
        "LSTMD_KAFKA__PREDICTIONS_TOPIC": f"pred-{tag}",
        "LSTMD_KAFKA__DEAD_LETTER_TOPIC": f"dlq-{tag}",
        "LSTMD_KAFKA__METRICS_TOPIC": f"met-{tag}",
        "LSTMD_KAFKA__GROUP_ID": f"g-{tag}",
        "LSTMD_MODEL__N_FEATURES": "2",
        "LSTMD_MODEL__UNITS": "8",
        "LSTMD_MODEL__BATCH_SIZE": "4",
        "LSTMD_MODEL__WINDOW": "4",
        "LSTMD_METRICS__PORT": "0",
        "LSTMD_LOG__FORMAT": "json",
    }


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_produced_csv_and_drains_on_signal(broker, tmp_path, signum):
    tag = uuid.uuid4().hex[:10]
    env = _topics_env(broker, tag, tmp_path / "snapshots")
    sent = _write_csv(tmp_path / "data.csv", keys=6, days=9)
    options = client_options(KafkaSettings(), broker.bootstrap)
    daemon = subprocess.Popen(
        [*LSTMD, "run"], env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        produced = _lstmd(
            "produce",
            "--csv",
            str(tmp_path / "data.csv"),
            "--key",
            "sensor",
            "--ts",
            "time",
            "--features",
            "temp,load",
            **env,
        )
        assert produced.returncode == 0, produced.stderr
        assert f"sent {sent}" in produced.stdout
        # Forecasts publish at the end of each poll: every event is answered while running.
        _wait_for(
            lambda: len(read_all(options, f"pred-{tag}", idle_s=0.5)) >= sent, 60, "predictions"
        )
        daemon.send_signal(signum)
        _, stderr = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, stderr[-2000:]
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    events = [line["event"] for line in logs]
    assert "stop requested" in events and events[-1] == "stopped"
    assert logs[-1]["events"] == sent
    predictions = [json.loads(r.value) for r in read_all(options, f"pred-{tag}")]
    assert sorted(p["source_offset"] for p in predictions) == list(range(sent))
    # Everything was committed: the group resumes at the end of the topic.
    source = EventSource(options, KafkaSettings(input_topic=f"in-{tag}", group_id=f"g-{tag}"))
    try:
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not source.assignment():
            got += source.poll(200)
        got += source.poll(500)
        assert got == []
    finally:
        source.close()


def test_demo_acceptance_summary(tmp_path):
    summary_path = tmp_path / "s.json"
    out = _lstmd(
        "demo",
        "--events",
        "4000",
        "--summary-json",
        str(summary_path),
        timeout=300,
        LSTMD_MODEL__UNITS="16",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert set(summary) == {
        "events_in",
        "predictions_out",
        "dead_lettered",
        "train_steps",
        "resets",
        "keys",
        "rows_per_step",
        "batch_size",
        "model_mae",
        "naive_mae",
        "elapsed_s",
    }
    assert summary["events_in"] == 4000
    assert summary["dead_lettered"] == 12
    assert summary["predictions_out"] == summary["events_in"] - summary["dead_lettered"]
    assert summary["keys"] == 51 and summary["train_steps"] > 0
    assert summary["rows_per_step"] > summary["batch_size"] / 2  # keys share full batches
    assert summary["model_mae"] < summary["naive_mae"]
    assert "lstmd demo summary" in out.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_secrets_never_reach_logs_metrics_or_check_config(broker, tmp_path):
    secret = "Zq-sekrit-7781"
    tag = uuid.uuid4().hex[:10]
    port = _free_port()
    env = _topics_env(broker, tag, tmp_path / "snapshots")
    env.update(
        LSTMD_KAFKA__SASL_USERNAME="svc",  # set but unused on PLAINTEXT: still never shown
        LSTMD_KAFKA__SASL_PASSWORD=secret,
        LSTMD_KAFKA__SSL_PASSWORD=secret,
        LSTMD_METRICS__PORT=str(port),
        LSTMD_METRICS__HOST="127.0.0.1",
        LSTMD_LOG__LEVEL="DEBUG",
    )
    shown = _lstmd("check-config", **env)
    assert shown.returncode == 0 and secret not in shown.stdout + shown.stderr
    sent = _write_csv(tmp_path / "d.csv", keys=3, days=4)
    daemon = subprocess.Popen(
        [*LSTMD, "run"], env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        produced = _lstmd(
            "produce",
            "--csv",
            str(tmp_path / "d.csv"),
            "--key",
            "sensor",
            "--ts",
            "time",
            "--features",
            "temp,load",
            **env,
        )
        assert produced.returncode == 0 and secret not in produced.stdout + produced.stderr
        options = client_options(KafkaSettings(), broker.bootstrap)
        _wait_for(lambda: len(read_all(options, f"pred-{tag}", idle_s=0.5)) >= sent, 60, "preds")
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert b"lstmd_events_consumed_total" in metrics and secret.encode() not in metrics
    assert "snapshot written" in stderr and secret not in stderr
