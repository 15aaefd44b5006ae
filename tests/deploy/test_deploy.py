"""The deploy artefacts under deploy/: each is parsed and validated offline, and every setting
they name must exist in `daemon.settings.Settings` (and their values must load).

Validators (all offline): the BuildKit Dockerfile parser (`dockerfile` on PyPI), the Compose
Specification JSON schema that `check-jsonschema` vendors, the Kubernetes JSON schemas that
`kubernetes-validate` ships, and `systemd-analyze` (Debian `systemd`). `docker compose config`
runs too where a compose CLI exists; without one that single test is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml

from daemon.settings import CONFIG_ENV_VAR, KafkaSettings, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
UNIT = DEPLOY / "systemd" / "lstmd.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "lstmd.env.example"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "lstmd.yml"

# SIGTERM drains: train buffered events, publish, flush, commit. Every deploy file allows this.
DRAIN_TIMEOUT_S = 60
# Peak RSS (VmHWM) of the lstmd process in `lstmd demo --events 20000`: 665,712 kB.
MEASURED_RSS_BYTES = 665_712 * 1024
# Kubernetes schema versions to validate against: an old supported one and the newest shipped.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())

TOPICS = {
    KafkaSettings().input_topic,
    KafkaSettings().predictions_topic,
    KafkaSettings().dead_letter_topic,
    KafkaSettings().metrics_topic,
}
SETTING_NAME = re.compile(r"\bLSTMD_[A-Z0-9_]*[A-Z0-9]\b")


# ---- helpers ----------------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _k8s_docs() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object under deploy/k8s except the kustomization, by kind."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                assert doc["kind"] not in docs, f"two {doc['kind']} objects"
                docs[doc["kind"]] = doc
    return docs


def _duration_s(text: str) -> float:
    """Seconds in a Compose or systemd duration such as `60s`, `1m30s`, `90`."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|sec|s|m|h)?", text.strip())
    assert parts, text
    return sum(float(n) * units[u or "s"] for n, u in parts)


def _quantity(text: str | int) -> float:
    """A Kubernetes quantity (`1536Mi`, `1Gi`, `500m`, `2`) as a number."""
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(text))
    assert match, text
    return float(match[1]) * suffixes.get(match[2], 1)


def _unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section → key → values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def _compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE)


def _compose_lstmd_env() -> dict[str, str]:
    env = _compose()["services"]["lstmd"]["environment"]
    assert isinstance(env, dict), "write lstmd's environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def _k8s_env() -> dict[str, str]:
    docs = _k8s_docs()
    return {**docs["ConfigMap"]["data"], **docs["Secret"]["stringData"]}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No LSTMD_ variable of the test process leaks into a settings check."""
    for name in list(os.environ):
        if name.startswith("LSTMD_"):
            monkeypatch.delenv(name)
    return monkeypatch


# ---- every setting named anywhere in deploy/ exists --------------------------------------------


def _named_settings() -> dict[str, set[str]]:
    """Every `LSTMD_...` name in deploy/ and .dockerignore, with the files naming it."""
    names: dict[str, set[str]] = {}
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [DOCKERIGNORE]
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name in SETTING_NAME.findall(text):
            names.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return names


def test_every_setting_named_in_deploy_files_exists() -> None:
    names = _named_settings()
    # The scan must see the files it is meant to police, or it would pass on nothing.
    seen_in = set().union(*names.values())
    for path in (DOCKERFILE, COMPOSE, K8S / "configmap.yaml", K8S / "secret.yaml", ENV_EXAMPLE):
        assert str(path.relative_to(ROOT)) in seen_in, f"no LSTMD_ setting found in {path}"
    unknown = []
    for name, where in sorted(names.items()):
        if name == CONFIG_ENV_VAR:
            continue
        section, sep, field = name.removeprefix("LSTMD_").lower().partition("__")
        section_field = Settings.model_fields.get(section)
        if not sep or section_field is None or "__" in field:
            unknown.append(f"{name} ({', '.join(sorted(where))}): no such section")
            continue
        model = section_field.annotation
        if field not in model.model_fields:  # type: ignore[union-attr]
            unknown.append(f"{name} ({', '.join(sorted(where))}): {section} has no {field}")
    assert not unknown, "settings named in deploy files but missing in Settings:\n" + "\n".join(
        unknown
    )


@pytest.mark.parametrize(
    ("source", "read"),
    [
        ("Dockerfile ENV", _dockerfile_env),
        ("compose lstmd.environment", _compose_lstmd_env),
        ("k8s ConfigMap + Secret", _k8s_env),
        ("systemd env example", lambda: _env_file(ENV_EXAMPLE)),
    ],
)
def test_deploy_settings_load(
    source: str, read: Any, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The values, not only the names, pass the settings model."""
    env = {k: v for k, v in read().items() if k.startswith("LSTMD_")}
    assert env, source
    for name, value in env.items():
        if name.startswith("LSTMD_KAFKA__SSL_") and name.endswith("FILE"):
            # TLS files must exist where lstmd runs; stand in for the deployment's own.
            value = str(tmp_path / Path(value).name)
            Path(value).write_text("placeholder\n")
        clean_env.setenv(name, value)
    clean_env.delenv(CONFIG_ENV_VAR, raising=False)
    try:
        settings = load_settings()
    except SettingsError as exc:
        pytest.fail(f"{source}: {exc}")
    if source != "Dockerfile ENV":  # the image leaves the broker to its deployment
        assert settings.kafka.bootstrap_servers, f"{source} must set the bootstrap servers"
    assert settings.snapshot.directory.is_absolute(), f"{source}: snapshot directory is relative"


# ---- Dockerfile ---------------------------------------------------------------------------------


def _docker_commands() -> list[Any]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def _one(commands: list[Any], cmd: str) -> Any:
    found = [c for c in commands if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd}, found {len(found)}"
    return found[0]


def test_dockerfile_base_layers_and_user() -> None:
    commands = _docker_commands()
    base = _one(commands, "FROM").value[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    order = [(c.cmd, " ".join(c.value)) for c in commands]
    copy_pyproject = order.index(("COPY", "pyproject.toml ./"))
    install_deps = next(
        i for i, (cmd, v) in enumerate(order) if cmd == "RUN" and "requirements" in v
    )
    copy_package = next(i for i, (cmd, v) in enumerate(order) if cmd == "COPY" and "daemon" in v)
    # The dependency layer is keyed on pyproject.toml alone: code edits reuse the cached layer.
    assert copy_pyproject < install_deps < copy_package
    assert not any(cmd in {"COPY", "ADD"} for cmd, _ in order[:copy_pyproject])
    user = _one(commands, "USER").value[0].split(":")[0]
    assert user not in {"root", "0"}
    assert _one(commands, "STOPSIGNAL").value == ("SIGTERM",)
    # Exec form: lstmd itself is PID 1 and gets SIGTERM; no shell in between.
    entrypoint, cmd = _one(commands, "ENTRYPOINT"), _one(commands, "CMD")
    assert entrypoint.json and entrypoint.value == ("lstmd",)
    assert cmd.json and cmd.value == ("run",)
    volume = _one(commands, "VOLUME").value
    assert _dockerfile_env()["LSTMD_SNAPSHOT__DIRECTORY"] in volume


def test_dockerfile_installs_the_cpu_dependencies_of_pyproject(tmp_path: Path) -> None:
    """The dependency layer's one-liner, run here, yields pyproject's list with tensorflow-cpu."""
    run = next(
        c for c in _docker_commands() if c.cmd == "RUN" and "requirements" in " ".join(c.value)
    )
    words = shlex.split(run.value[0])
    code = words[words.index("-c") + 1]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(req.startswith("tensorflow-cpu") for req in out), out
    assert not any(re.match(r"tensorflow[<>=!~ ]|tensorflow$", req) for req in out), out


class _Probe(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[tuple[int, type[_Probe]]]:
    handler = type("Handler", (_Probe,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_dockerfile_healthcheck_probes_healthz(probe_server: tuple[int, type[_Probe]]) -> None:
    """The HEALTHCHECK command passes on 200 from /healthz and fails on 503, without curl."""
    port, handler = probe_server
    check = _one(_docker_commands(), "HEALTHCHECK")
    assert check.json and check.value[0] == "CMD"
    argv = list(check.value[1:])
    assert argv[0] == "python" and "curl" not in " ".join(argv)
    argv[0] = sys.executable
    env = {**os.environ, "LSTMD_METRICS__PORT": str(port)}
    assert subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode == 0
    handler.status = 503
    assert subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode != 0


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: exclude everything first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        src.rstrip("/")
        for c in _docker_commands()
        if c.cmd in {"COPY", "ADD"} and not any(f.startswith("--from") for f in c.flags)
        for src in c.value[:-1]
    }
    assert sources == allowed
    for src in sources:
        assert (ROOT / src).exists(), src


# ---- docker-compose.yml ------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec and spec.origin, "pip install check-jsonschema (it vendors the compose-spec)"
    path = Path(spec.origin).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_compose_matches_the_compose_spec_schema() -> None:
    schema = _compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(_compose()), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_compose_services() -> None:
    services = _compose()["services"]
    assert {"kafka", "kafka-init", "lstmd", "prometheus", "grafana"} <= services.keys()

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    roles = set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(","))
    assert roles == {"broker", "controller"}, "KRaft: one node is broker and controller"
    assert "zookeeper" not in COMPOSE.read_text(encoding="utf-8").lower()

    init = services["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = " ".join(init.get("command") or []) + " ".join(init.get("entrypoint") or [])
    assert "--if-not-exists" in script
    for topic in TOPICS:
        assert topic in script, f"kafka-init does not create {topic}"

    lstmd = services["lstmd"]
    build = lstmd["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert lstmd["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert _duration_s(lstmd["stop_grace_period"]) >= DRAIN_TIMEOUT_S
    assert lstmd.get("stop_signal", "SIGTERM") == "SIGTERM"
    env = _compose_lstmd_env()
    assert env["LSTMD_KAFKA__BOOTSTRAP_SERVERS"].split(":")[0] == "kafka"
    topics = {env[f"LSTMD_KAFKA__{k}_TOPIC"] for k in ("INPUT", "PREDICTIONS", "DEAD_LETTER")}
    assert topics | {env["LSTMD_KAFKA__METRICS_TOPIC"]} == TOPICS
    targets = [v.split(":")[1] for v in lstmd["volumes"]]
    assert env["LSTMD_SNAPSHOT__DIRECTORY"] in targets, "snapshots must be on a volume"

    # Two replicas in one group, each with its own instance id and snapshot volume.
    replicas = [services["lstmd"], services["lstmd-1"]]
    envs = [{k: str(v) for k, v in r["environment"].items()} for r in replicas]
    assert envs[0]["LSTMD_KAFKA__GROUP_ID"] == envs[1]["LSTMD_KAFKA__GROUP_ID"]
    assert len({e["LSTMD_KAFKA__GROUP_INSTANCE_ID"] for e in envs}) == 2
    assert {k: v for k, v in envs[1].items() if "INSTANCE" not in k} == {
        k: v for k, v in envs[0].items() if "INSTANCE" not in k
    }
    snapshot_volumes = [
        v.split(":")[0]
        for r, e in zip(replicas, envs, strict=True)
        for v in r["volumes"]
        if v.split(":")[1] == e["LSTMD_SNAPSHOT__DIRECTORY"]
    ]
    assert len(set(snapshot_volumes)) == 2, "each replica needs its own snapshot volume"


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path of the relative bind mounts of a service."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def test_compose_monitoring_files_exist_and_agree() -> None:
    services = _compose()["services"]
    prometheus = _bind_mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    assert prometheus["/etc/prometheus/alerts.yml"] == ALERTS
    grafana = _bind_mounts(services["grafana"])
    for host in (*prometheus.values(), *grafana.values()):
        assert host.exists(), f"compose mounts {host.relative_to(ROOT)}, which does not exist"

    # Prometheus scrapes the lstmd service on its metrics port and loads the mounted rules.
    config = _load_yaml(PROMETHEUS_CONFIG)
    port = _compose_lstmd_env()["LSTMD_METRICS__PORT"]
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert f"lstmd:{port}" in targets
    for rule_file in config["rule_files"]:
        assert str(Path("/etc/prometheus") / rule_file) in prometheus

    # Grafana: the datasource is the compose Prometheus; the provider reads the mounted dashboard.
    datasource = _load_yaml(GRAFANA_DATASOURCE)["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = _load_yaml(GRAFANA_DASHBOARDS)["providers"][0]
    dashboards = [t for t, h in grafana.items() if h.suffix == ".json"]
    assert dashboards
    assert all(Path(t).parent == Path(provider["options"]["path"]) for t in dashboards)
    for target in dashboards:
        dashboard = json.loads(grafana[target].read_text(encoding="utf-8"))
        uids = _datasource_uids(dashboard)
        assert uids, "the dashboard names no Prometheus datasource"
        # A `${var}` uid is a datasource variable; it picks the default Prometheus datasource.
        variables = {
            v["name"]
            for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "datasource" and v.get("query") == "prometheus"
        }
        fixed = {u for u in uids if not u.startswith("$")}
        named = {u.strip("${}") for u in uids - fixed}
        assert fixed <= {datasource["uid"]}, f"dashboard refers to datasource uids {fixed}"
        assert named <= variables, f"no Prometheus datasource variable for {named - variables}"
        assert not named or datasource["isDefault"] is True


def _datasource_uids(node: Any) -> set[str]:
    """The uids of the Prometheus datasources a dashboard refers to."""
    uids: set[str] = set()
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and source.get("type") == "prometheus" and source.get("uid"):
            uids.add(str(source["uid"]))
        for value in node.values():
            uids |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            uids |= _datasource_uids(value)
    return uids


# ---- Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    docs = _k8s_docs()
    builtin = {k: d for k, d in docs.items() if "monitoring.coreos.com" not in d["apiVersion"]}
    assert {"ConfigMap", "Secret", "Service", "StatefulSet"} <= builtin.keys()
    for kind, doc in builtin.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}: {exc}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    container = _k8s_docs()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0] in {i["name"] for i in kustomization["images"]}


def test_k8s_statefulset() -> None:
    docs = _k8s_docs()
    sts = docs["StatefulSet"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["terminationGracePeriodSeconds"] >= DRAIN_TIMEOUT_S

    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = _k8s_env()
    assert ports["metrics"] == int(env["LSTMD_METRICS__PORT"])
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["port"] in ("metrics", ports["metrics"]), probe

    # Static membership: each pod's group instance id is its own name.
    (instance,) = [e for e in container["env"] if e["name"] == "LSTMD_KAFKA__GROUP_INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    budget = docs["PodDisruptionBudget"]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels.items()

    refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
    assert refs == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), kind
    assert _quantity(resources["requests"]["memory"]) >= MEASURED_RSS_BYTES
    assert _quantity(resources["limits"]["memory"]) >= _quantity(resources["requests"]["memory"])

    # Non-root, read-only root filesystem, /tmp writable.
    pod_security, security = pod["securityContext"], container["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]

    # Snapshots on the PersistentVolumeClaim of each pod.
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    assert mounts[env["LSTMD_SNAPSHOT__DIRECTORY"]] in claims

    service = docs["Service"]
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {"metrics", ports["metrics"]}


def test_k8s_secret_is_a_marked_placeholder() -> None:
    docs = _k8s_docs()
    secret = docs["Secret"]["stringData"]
    assert {"LSTMD_KAFKA__SASL_USERNAME", "LSTMD_KAFKA__SASL_PASSWORD"} <= secret.keys()
    assert all("CHANGE-ME" in value for value in secret.values())
    assert "PLACEHOLDER" in (K8S / "secret.yaml").read_text(encoding="utf-8")
    # Nothing secret in the ConfigMap.
    assert not any("PASSWORD" in key for key in docs["ConfigMap"]["data"])


def test_k8s_podmonitor_scrapes_the_pods_as_job_lstmd() -> None:
    docs = _k8s_docs()
    monitor = docs["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    pod = docs["StatefulSet"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint.get("path", "/metrics") == "/metrics"
    # The alert rules select job="lstmd"; jobLabel names the pod label that becomes `job`.
    assert labels[monitor["spec"]["jobLabel"]] == "lstmd"


def test_k8s_prometheusrule_carries_the_alerts_of_alerts_yml() -> None:
    rule = _k8s_docs()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == _load_yaml(ALERTS)["groups"], (
        "deploy/k8s/prometheusrule.yaml must carry deploy/prometheus/alerts.yml's groups "
        "unchanged: copy them under `spec:` again"
    )
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    for concern in ("Stalled", "Lag", "Snapshot", "DeadLetter", "NonFinite", "Naive"):
        assert any(concern.lower() in a.lower() for a in alerts), f"no alert for {concern}"


# ---- systemd ------------------------------------------------------------------------------------


def test_systemd_unit_settings() -> None:
    unit = _unit_file(UNIT)
    service = unit["Service"]

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    assert one("Restart") == "on-failure"
    assert _duration_s(one("TimeoutStopSec")) >= DRAIN_TIMEOUT_S
    assert one("KillSignal") == "SIGTERM"
    assert one("EnvironmentFile") == "/etc/lstmd/lstmd.env"
    assert one("StateDirectory") == "lstmd"
    assert shlex.split(one("ExecStart"))[1:] == ["run"]
    assert Path(shlex.split(one("ExecStart"))[0]).is_absolute()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert one(key) == value, key
    assert service.get("DynamicUser") == ["yes"] or service.get("User", ["root"])[0] != "root"
    # Snapshots go under the StateDirectory, the one writable place ProtectSystem=strict leaves.
    snapshots = Path(_env_file(ENV_EXAMPLE)["LSTMD_SNAPSHOT__DIRECTORY"])
    assert snapshots.is_relative_to("/var/lib/lstmd")
    assert "WantedBy" in unit["Install"]


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with only ExecStart pointed at an executable that exists (verify checks it)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing: apt-get install systemd")
    fake = tmp_path / "lstmd"
    fake.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    fake.chmod(0o755)
    text = UNIT.read_text(encoding="utf-8")
    (exec_start,) = re.findall(r"^ExecStart=(\S+)", text, flags=re.M)
    unit = tmp_path / "lstmd.service"
    unit.write_text(text.replace(f"ExecStart={exec_start}", f"ExecStart={fake}"), encoding="utf-8")
    return unit


def test_systemd_analyze_verify(verifiable_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # verify exits 0 on unknown keys and bad values too; its warnings are the errors.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_security(verifiable_unit: Path) -> None:
    # Exposure on systemd's 0-100 scale (shown as 0.0-10.0); the hardening keeps it "OK".
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
