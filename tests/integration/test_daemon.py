"""The daemon end to end on the real embedded broker: good and bad events mixed, predictions,
dead letters, the /metrics endpoint, and kcat reading what the daemon wrote."""

from __future__ import annotations

import gc
import json
import urllib.request

import pytest
from daemon_helpers import daemon_settings

from daemon.edges.kafka_io import produce_values, read_all
from daemon.service.app import build_daemon
from daemon.settings import MetricsSettings, Settings, StreamSettings

pytestmark = pytest.mark.integration

KEYS = [f"sensor-{i}" for i in range(6)]  # more keys than the 4 rows of a train step
DAYS = 12


def _settings(bootstrap: str, snapshot_dir) -> Settings:
    return daemon_settings(
        bootstrap,
        snapshot_dir,
        stream=StreamSettings(max_batch_wait_ms=0, max_event_bytes=2048),
        metrics=MetricsSettings(host="127.0.0.1", port=0, every_steps=1),
    )


def _good(key: str, day: int, supervised: bool) -> bytes:
    event = {"key": key, "ts": 1_700_000_000 + 86_400 * day, "features": [day % 7, 10.0 + day]}
    if supervised:
        event["target"] = [11.0 + day]
    return json.dumps(event).encode()


# (value, reason) for every class of bad event in DESIGN §2.
BAD = [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "not_object"),
    (b'{"ts": 1700000000, "features": [1, 2]}', "missing_key"),
    (b'{"key": "x", "ts": "noon", "features": [1, 2]}', "bad_ts"),
    (b'{"key": "x", "ts": 1700000000, "features": [1]}', "bad_features"),
    (b'{"key": "x", "ts": 1700000000, "features": [1, NaN]}', "non_finite"),
    (b'{"key": "x", "ts": 1700000000, "features": [1, 2], "target": "a"}', "bad_target"),
    (b'{"key": "x", "ts": 1700000000, "features": [1, 2], "reset": 3}', "bad_reset"),
    (b'{"key": "x", "ts": 1, "features": [' + b"1," * 2000 + b"2]}", "too_large"),
    (b"", "empty"),
    (_good(KEYS[0], 0, supervised=False), "out_of_order"),  # day 0 again, after later days
]


def _stream() -> tuple[list[tuple[bytes | None, bytes]], dict[int, str]]:
    messages: list[tuple[bytes | None, bytes]] = []
    bad_at: dict[int, str] = {}
    bad = iter(BAD)
    for day in range(DAYS):
        for index, key in enumerate(KEYS):
            messages.append((key.encode(), _good(key, day, supervised=index % 3 == 0)))
        if day >= 2:
            value, reason = next(bad, (None, None))
            if value is not None:
                bad_at[len(messages)] = reason
                messages.append((None, value))
    return messages, bad_at


@pytest.fixture(scope="module")
def daemon_run(broker, tmp_path_factory):
    settings = _settings(broker.bootstrap, tmp_path_factory.mktemp("snapshots"))
    from daemon.edges.kafka_io import client_options

    options = client_options(settings.kafka, broker.bootstrap)
    messages, bad_at = _stream()
    daemon = build_daemon(settings, options)
    frozen_while_running = gc.get_freeze_count()
    produce_values(options, settings.kafka.input_topic, messages)
    try:
        daemon.runner.run(until=lambda r: r.consumed >= len(messages))
        url = f"http://127.0.0.1:{daemon.endpoints.port}/metrics"
        metrics_text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        daemon.close()
    return {
        "frozen": (frozen_while_running, gc.get_freeze_count()),
        "settings": settings,
        "options": options,
        "messages": messages,
        "bad_at": bad_at,
        "daemon": daemon,
        "metrics_text": metrics_text,
        "predictions": read_all(options, settings.kafka.predictions_topic),
        "dead": read_all(options, settings.kafka.dead_letter_topic),
    }


def test_each_bad_event_is_dead_lettered_once_with_its_reason(daemon_run):
    dead = daemon_run["dead"]
    by_offset = {}
    for record in dead:
        headers = dict(record.headers)
        offset = int(headers["lstmd-source-offset"])
        assert offset not in by_offset, "dead-lettered twice"
        by_offset[offset] = (headers["lstmd-reason"].decode(), record)
    assert {o: r for o, (r, _) in by_offset.items()} == daemon_run["bad_at"]
    for offset, (_, record) in by_offset.items():
        assert record.value == daemon_run["messages"][offset][1]  # original bytes, unchanged
        headers = dict(record.headers)
        assert headers["lstmd-source-topic"].decode() == daemon_run["settings"].kafka.input_topic
        assert headers["lstmd-detail"]


def test_each_good_event_gets_exactly_one_prediction_with_the_design_fields(daemon_run):
    predictions = [json.loads(r.value) for r in daemon_run["predictions"]]
    offsets = [p["source_offset"] for p in predictions]
    good = set(range(len(daemon_run["messages"]))) - set(daemon_run["bad_at"])
    assert sorted(offsets) == sorted(good)
    for p in predictions:
        assert set(p) == {
            "key",
            "ts",
            "source_partition",
            "source_offset",
            "mode",
            "prediction",
            "target",
            "model_step",
            "source_topic",
            "intervals",
        }
        assert [i["level"] for i in p["intervals"]] == [0.8, 0.95]
        for interval in p["intervals"]:
            assert interval["lower"][0] <= p["prediction"][0] <= interval["upper"][0]
        assert p["mode"] in ("forecast", "supervised")
        assert len(p["prediction"]) == 1 and p["prediction"][0] is not None
        assert (p["target"] is not None) == (p["mode"] == "supervised")
    record = daemon_run["predictions"][0]
    assert record.key.decode() == json.loads(record.value)["key"]


def test_runner_counters_add_up(daemon_run):
    runner = daemon_run["daemon"].runner
    assert runner.consumed == len(daemon_run["messages"])
    assert runner.consumed == runner.predictions_sent + runner.dead_lettered
    assert daemon_run["daemon"].model.train_traces == 1


def test_metrics_endpoint_reports_the_run(daemon_run):
    text = daemon_run["metrics_text"]
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    total = len(daemon_run["messages"])
    assert samples["lstmd_events_consumed_total"] == total
    assert samples['lstmd_events_rejected_total{reason="invalid_json"}'] == 1
    assert samples["lstmd_train_steps_total"] >= 1
    assert samples["lstmd_predictions_published_total"] == total - len(daemon_run["bad_at"])
    assert samples["lstmd_train_step_duration_seconds_count"] >= 1
    assert "lstmd_loss" in samples


def test_metrics_topic_messages_parse_and_steps_increase(daemon_run):
    records = read_all(daemon_run["options"], daemon_run["settings"].kafka.metrics_topic)
    steps = [json.loads(r.value)["step"] for r in records]
    assert steps and steps == sorted(steps) and len(set(steps)) == len(steps)


def test_kcat_reads_the_predictions_topic(daemon_run, broker, kcat):
    topic = daemon_run["settings"].kafka.predictions_topic
    out = kcat("-b", broker.bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%k\t%s\n")
    lines = [line for line in out.stdout.splitlines() if line]
    assert len(lines) == len(daemon_run["predictions"])
    key, value = lines[0].split("\t", 1)
    payload = json.loads(value)
    assert payload["key"] == key
    assert {"ts", "source_partition", "source_offset", "mode", "prediction", "model_step"} <= set(
        payload
    )


def test_start_up_objects_are_kept_out_of_full_collections_while_the_daemon_runs(daemon_run):
    # TensorFlow and the model: hundreds of thousands of objects a full collection would walk.
    while_running, after_close = daemon_run["frozen"]
    assert while_running > 100_000
    assert after_close == 0
