"""The metrics against the real Prometheus tools: promtool lints the exposition and the alert rules
and runs the rule unit tests, and a real Prometheus server scrapes a running daemon."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import daemon_settings

from daemon.edges.kafka_io import client_options, produce_values
from daemon.service.app import build_daemon
from daemon.settings import (
    Settings,
)

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
KEYS = [f"k{i}" for i in range(5)]  # more keys than the 4 rows of a train step
DAYS = 16
BAD = [b"{not json", b'{"key": "x", "ts": 1700000000, "features": [1]}']
# Prometheus's whole part of the run (start, scrapes, queries) stays well inside this.
WAIT_S = 20.0


def _tool(name: str) -> str:
    """Return the path of a Prometheus tool; fail (never skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install prometheus")
    return path


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [_tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class PrometheusServer:
    """A real `prometheus` process scraping one target every second, on a loopback port."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        # Same job name and rule file as deploy/, at 1 s so the test does not wait on scrapes.
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(ALERTS))}]\n"
            "scrape_configs:\n"
            "  - job_name: lstmd\n"
            f"    static_configs: [{{targets: [{json.dumps(target)}]}}]\n"
        )
        self._log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                _tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = workdir / "prometheus.log"

    def wait_ready(self) -> None:
        self.wait_for(lambda: self._ready(), "Prometheus to become ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def query(self, expr: str) -> list[dict]:
        """Run an instant query; return its result vector."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = _get(url)
        except urllib.error.HTTPError as err:  # a bad expression answers 400 with the reason
            body = json.loads(err.read())
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """Return the single value `expr` yields now, or None when it yields nothing."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            if condition():
                return
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}; log tail: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


def _settings(bootstrap: str, snapshot_dir: Path) -> Settings:
    return daemon_settings(bootstrap, snapshot_dir)


def _stream() -> list[tuple[bytes | None, bytes]]:
    messages: list[tuple[bytes | None, bytes]] = []
    for day in range(DAYS):
        for key in KEYS:
            event = {"key": key, "ts": 1_700_000_000 + 86_400 * day, "features": [day % 7, day]}
            messages.append((key.encode(), json.dumps(event).encode()))
    messages[10:10] = [(None, value) for value in BAD]
    return messages


@pytest.fixture(scope="module")
def scraped_run(broker, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Run a daemon on a small stream while a real Prometheus scrapes it; yield what they saw."""
    settings = _settings(broker.bootstrap, tmp_path_factory.mktemp("snapshots"))
    options = client_options(settings.kafka, broker.bootstrap)
    messages = _stream()
    daemon = build_daemon(settings, options)
    target = f"127.0.0.1:{daemon.endpoints.port}"
    prometheus = None
    try:
        prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"), target)
        prometheus.wait_ready()
        # One scrape of the idle daemon first, so the counters are seen to rise from 0.
        prometheus.wait_for(
            lambda: prometheus.value("lstmd_events_consumed_total") == 0.0,
            "the first scrape of the idle daemon",
        )
        started = time.time()
        produce_values(options, settings.kafka.input_topic, messages)
        daemon.runner.run(until=lambda r: r.consumed >= len(messages))
        url = f"http://{target}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            exposition = response.read().decode()
        prometheus.wait_for(
            lambda: prometheus.value("lstmd_events_consumed_total") == len(messages),
            f"Prometheus to see {len(messages)} events consumed",
        )
        yield {
            "prometheus": prometheus,
            "messages": messages,
            "runner": daemon.runner,
            "exposition": exposition,
            "started": started,
        }
    finally:
        if prometheus is not None:
            prometheus.stop()
        daemon.close()


def test_metrics_exposition_passes_promtool_check_metrics(scraped_run):
    text = scraped_run["exposition"]
    assert "lstmd_events_consumed_total" in text
    result = _promtool("check", "metrics", stdin=text)
    # promtool prints lint problems (names, units, help) and still exits 0 for some of them.
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result


def test_alert_rules_pass_promtool_check_rules():
    result = _promtool("check", "rules", str(ALERTS))
    assert "SUCCESS" in result.stdout


def test_alert_rule_unit_tests_pass():
    result = _promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    assert "SUCCESS" in result.stdout


def test_deploy_config_passes_promtool_check_config():
    _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))


def test_prometheus_scrapes_every_consumed_event(scraped_run):
    prometheus = scraped_run["prometheus"]
    sent = len(scraped_run["messages"])
    runner = scraped_run["runner"]
    assert prometheus.value('up{job="lstmd"}') == 1.0
    assert prometheus.value("lstmd_events_consumed_total") == sent == runner.consumed
    assert prometheus.value("sum(lstmd_events_rejected_total)") == len(BAD)
    assert prometheus.value('lstmd_events_rejected_total{reason="invalid_json"}') == 1
    assert prometheus.value("lstmd_predictions_published_total") == sent - len(BAD)
    assert prometheus.value("lstmd_train_steps_total") >= 1
    assert prometheus.value("lstmd_keys_in_store") == len(KEYS)
    assert prometheus.value("lstmd_batch_rows_count") == prometheus.value("lstmd_train_steps_total")
    assert prometheus.value("lstmd_event_to_prediction_seconds_count") == sent - len(BAD)


def test_counters_rise_between_scrapes(scraped_run):
    prometheus = scraped_run["prometheus"]
    window = f"{int(time.time() - scraped_run['started']) + 5}s"
    for name in ("lstmd_events_consumed_total", "lstmd_predictions_published_total"):
        # Scraped at 0 before the run and at its total after: the counter rose, never reset.
        assert prometheus.value(f"min_over_time({name}[{window}])") == 0.0
        assert prometheus.value(f"max_over_time({name}[{window}])") > 0.0
        assert prometheus.value(f"resets({name}[{window}])") == 0.0
    assert prometheus.value(f"increase(lstmd_events_consumed_total[{window}])") > 0


def test_every_dashboard_query_runs_on_prometheus(scraped_run):
    prometheus = scraped_run["prometheus"]
    dashboard = json.loads((DEPLOY / "grafana" / "lstmd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    empty = []
    for expr in exprs:
        # Grafana's variables, as Grafana would fill them in for "All" and a short range.
        query = (
            expr.replace("$__rate_interval", "30s").replace("$job", ".*").replace("$instance", ".*")
        )
        if not prometheus.query(query):  # fails on any expression Prometheus rejects
            empty.append(expr)
    # May be empty, and only these: weight sync (one replica syncs nothing), and the per-partition
    # lag gauges, which are removed when the daemon's stop revokes its partitions (a stale
    # marker), so whether they answer depends on when the last scrape fell.
    may_be_empty = ("weight_sync", "consumer_lag", "state_topic_lag")
    unexplained = [e for e in empty if not any(name in e for name in may_be_empty)]
    assert unexplained == [], f"{len(empty)} of {len(exprs)} panel queries returned nothing"


def test_alert_rules_load_and_evaluate_on_real_series(scraped_run):
    prometheus = scraped_run["prometheus"]

    def evaluated() -> list[dict]:
        groups = _get(f"{prometheus.base}/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    prometheus.wait_for(
        lambda: all(rule.get("lastEvaluation", "").startswith("2") for rule in evaluated()),
        "every rule to be evaluated",
    )
    rules = evaluated()
    assert len(rules) == 7
    assert all(rule["health"] == "ok" for rule in rules), rules
    firing = [r["name"] for r in rules for a in r["alerts"] if a["state"] == "firing"]
    assert "LstmdLossNonFinite" not in firing
    assert "LstmdLoopStalled" not in firing
