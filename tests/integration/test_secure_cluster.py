"""The daemon against a cluster that demands TLS and client certificates: every client (consumer,
the publishing process, dead letters and metrics, state topic, weights topic, commits) connects
through a TLS terminator the test owns, with a CA the test makes (Tansu 0.6.0 cannot serve TLS
itself; see tls_proxy.py and the README's Security section for what it cannot do with SASL)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import daemon_settings
from tls_proxy import HOST, SaslTlsProxy, ScramUser, TlsProxy, make_ca_and_certs

from daemon.edges.embedded import EmbeddedBroker
from daemon.edges.kafka_io import (
    client_options,
    committed_offsets,
    ensure_topics,
    produce_values,
    read_all,
)
from daemon.edges.state_topic import StateTopic
from daemon.service.app import build_daemon
from daemon.settings import KafkaSettings, ModelSettings, Settings, SnapshotSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 3
KEYS = [f"k{i}" for i in range(6)]


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    certs = make_ca_and_certs(tmp_path_factory.mktemp("tls"))
    proxy = TlsProxy(("127.0.0.1", 1), certs["server.pem"], client_ca=certs["ca.crt"])
    yield from _broker_behind(proxy, certs)


def _broker_behind(proxy: TlsProxy, certs: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """Start a broker that tells clients to connect to `proxy`, and point the proxy at it."""
    broker = EmbeddedBroker(advertised_url=f"tcp://{HOST}:{proxy.port}")
    broker.start()
    proxy.retarget((HOST, broker.port))
    try:
        yield {"bootstrap": f"{HOST}:{proxy.port}", "certs": certs, "proxy": proxy}
    finally:
        proxy.close()
        broker.stop()


def _mutual_tls(base: Settings, certs: dict[str, Path]) -> Settings:
    kafka = base.kafka.model_dump() | {
        "security_protocol": "SSL",
        "ssl_cafile": str(certs["ca.crt"]),
        "ssl_certfile": str(certs["client.crt"]),
        "ssl_keyfile": str(certs["client.key"]),
    }
    return base.model_copy(update={"kafka": KafkaSettings(**kafka)})


def test_the_cluster_refuses_clients_without_a_certificate(secure_broker) -> None:
    context = ssl.create_default_context(cafile=str(secure_broker["certs"]["ca.crt"]))
    failed_before = secure_broker["proxy"].handshakes_failed
    port = int(secure_broker["bootstrap"].split(":")[1])
    raw = socket.create_connection(("127.0.0.1", port))
    with pytest.raises((ssl.SSLError, ConnectionError)):  # noqa: SIM117 (a TLS alert or a reset)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"\x00\x00\x00\x01")
            if not tls.recv(10):
                raise ConnectionError("closed without an answer")
    raw.close()
    deadline = time.monotonic() + 5
    while secure_broker["proxy"].handshakes_failed == failed_before:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_every_client_of_the_daemon_works_over_mutual_tls(secure_broker, tmp_path) -> None:
    bootstrap, certs = secure_broker["bootstrap"], secure_broker["certs"]
    settings = _mutual_tls(
        daemon_settings(
            bootstrap,
            tmp_path,
            model=ModelSettings(n_features=2, units=8, batch_size=4, window=4, sync_every_s=1),
            snapshot=SnapshotSettings(directory=tmp_path, every_steps=3, every_s=0),
        ),
        certs,
    )
    kafka = settings.kafka
    assert kafka.publisher_process  # the shipped default: the child gets the TLS options too
    options = client_options(kafka, bootstrap)
    ensure_topics(options, [kafka.input_topic], partitions=PARTITIONS)
    events = [
        (k.encode(), json.dumps({"key": k, "ts": 1.7e9 + 60 * d, "features": [d % 4, i]}).encode())
        for d in range(30)
        for i, k in enumerate(KEYS)
    ]
    events.append((b"bad", b"not json"))  # a dead letter goes through the in-process producer
    produce_values(options, kafka.input_topic, events)
    daemon = build_daemon(settings, options)
    try:
        daemon.runner.run(until=lambda r: r.predictions_sent + r.dead_lettered >= len(events))
        synced = daemon.metrics.registry.get_sample_value(
            "lstmd_weight_sync_last_timestamp_seconds"
        )
    finally:
        daemon.close()
    answered = {
        (p["source_partition"], p["source_offset"])
        for p in (json.loads(r.value) for r in read_all(options, kafka.predictions_topic))
    }
    assert len(answered) == len(events) - 1
    assert len(read_all(options, kafka.dead_letter_topic)) == 1
    assert read_all(options, kafka.metrics_topic)
    committed = committed_offsets(options, kafka.group_id, kafka.input_topic)
    assert sum(committed.values()) == len(events)
    reader = StateTopic(options, kafka.state_topic, f"{kafka.group_id}/{kafka.input_topic}")
    try:
        stored = reader.read(range(PARTITIONS))
    finally:
        reader.close()
    assert {p: s.offset for p, s in stored.items()} == committed
    assert synced is not None  # published to and read from the weights topic at least once


# ---- SASL_SSL: SCRAM over TLS, answered by the proxy (see tls_proxy.py) -----------------------

USER, PASSWORD = "lstmd-test", "s3cret-never-logged"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    certs = make_ca_and_certs(tmp_path_factory.mktemp("sasl-tls"))
    proxy = SaslTlsProxy(("127.0.0.1", 1), certs["server.pem"], ScramUser(USER, PASSWORD))
    yield from _broker_behind(proxy, certs)


def _systemd_env() -> dict[str, str]:
    lines = (DEPLOY / "systemd" / "lstmd.env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def _k8s_env() -> dict[str, str]:
    import yaml

    env: dict[str, str] = {}
    for name in ("configmap.yaml", "secret.yaml"):
        document = yaml.safe_load((DEPLOY / "k8s" / name).read_text())
        env |= {k: str(v) for k, v in (document.get("data") or document.get("stringData")).items()}
    return env


def _shipped(
    env: dict[str, str], bootstrap: str, certs: dict[str, Path], tmp_path: Path
) -> Settings:
    """The shipped settings, with what a deployment fills in: brokers, CA, credentials, paths."""
    import uuid

    from daemon.settings import MetricsSettings

    tag = uuid.uuid4().hex[:8]
    values = {k: v for k, v in env.items() if k.startswith("LSTMD_")}
    values |= {
        "LSTMD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LSTMD_KAFKA__SSL_CAFILE": str(certs["ca.crt"]),
        "LSTMD_KAFKA__SASL_USERNAME": USER,
        "LSTMD_KAFKA__SASL_PASSWORD": PASSWORD,
        "LSTMD_SNAPSHOT__DIRECTORY": str(tmp_path),
    }
    for name in ("INPUT", "PREDICTIONS", "DEAD_LETTER", "METRICS", "STATE", "WEIGHTS"):
        key = f"LSTMD_KAFKA__{name}_TOPIC"
        values[key] = f"{values.get(key, name.lower())}-{tag}"
    values["LSTMD_KAFKA__GROUP_ID"] = f"{values.get('LSTMD_KAFKA__GROUP_ID', 'lstmd')}-{tag}"
    with pytest.MonkeyPatch.context() as patch:
        for key in list(__import__("os").environ):
            if key.startswith("LSTMD_"):
                patch.delenv(key)
        for key, value in values.items():
            patch.setenv(key, value)
        from daemon.settings import load_settings

        settings = load_settings()
    metrics = MetricsSettings(host="127.0.0.1", port=0)
    return settings.model_copy(update={"metrics": metrics})


@pytest.mark.parametrize("shipped", ["systemd", "k8s"])
def test_the_shipped_sasl_ssl_settings_start_and_answer_events(
    sasl_broker, tmp_path, shipped, caplog
) -> None:
    env = _systemd_env() if shipped == "systemd" else _k8s_env()
    settings = _shipped(env, sasl_broker["bootstrap"], sasl_broker["certs"], tmp_path)
    kafka = settings.kafka
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert kafka.publisher_process  # the child had crash-looped on exactly these settings
    options = client_options(kafka, sasl_broker["bootstrap"])
    n = settings.model.n_features
    events = [
        (k.encode(), json.dumps({"key": k, "ts": 1.7e9 + 60 * d, "features": [d % 3] * n}).encode())
        for d in range(20)
        for k in KEYS
    ]
    ensure_topics(options, [kafka.input_topic], partitions=PARTITIONS)
    produce_values(options, kafka.input_topic, events)
    logins_before = len(sasl_broker["proxy"].logins)
    daemon = build_daemon(settings, options)
    try:
        daemon.runner.run(until=lambda r: r.predictions_sent >= len(events))
    finally:
        daemon.close()
    answered = {
        (p["source_partition"], p["source_offset"])
        for p in (json.loads(r.value) for r in read_all(options, kafka.predictions_topic))
    }
    assert len(answered) == len(events)
    committed = committed_offsets(options, kafka.group_id, kafka.input_topic)
    assert sum(committed.values()) == len(events)
    logins = sasl_broker["proxy"].logins[logins_before:]
    assert logins and all(login == (USER, "SCRAM-SHA-512", True) for login in logins)
    assert PASSWORD not in caplog.text


def test_a_wrong_password_is_refused_by_the_scram_exchange(sasl_broker) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    certs = sasl_broker["certs"]
    wrong = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=USER,
        sasl_password="wrong",
        ssl_cafile=str(certs["ca.crt"]),
    )
    before = len(sasl_broker["proxy"].logins)
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            **client_options(wrong, sasl_broker["bootstrap"]), request_timeout_ms=3000
        ).list_topics()
    assert (USER, "SCRAM-SHA-256", False) in sasl_broker["proxy"].logins[before:]
