"""client_options: the settings-to-kafka-python mapping, secrets unwrapped only there."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from daemon.edges.kafka_io import client_options
from daemon.settings import KafkaSettings

SECURITY_KEYS = {
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
}


@pytest.fixture
def pem_files(tmp_path) -> dict[str, str]:
    """TLS file settings must name existing files; these stand in for them."""
    files = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
        files[name] = str(path)
    return files


def test_plain_settings_have_no_security_keys() -> None:
    options = client_options(KafkaSettings(client_id="me"), "a:9092, b:9093")
    assert options == {
        "bootstrap_servers": ["a:9092", "b:9093"],
        "client_id": "me",
        "security_protocol": "PLAINTEXT",
    }
    assert not SECURITY_KEYS & options.keys()


def test_sasl_ssl_settings_pass_through_with_secrets_unwrapped(pem_files) -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=pem_files["ca"],
        ssl_certfile=pem_files["cert"],
        ssl_keyfile=pem_files["key"],
        ssl_password=SecretStr("keypass"),
    )
    options = client_options(kafka, "broker:9094")
    assert options == {
        "bootstrap_servers": ["broker:9094"],
        "client_id": "lstmd",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": pem_files["ca"],
        "ssl_certfile": pem_files["cert"],
        "ssl_keyfile": pem_files["key"],
        "ssl_password": "keypass",
    }
    # The settings object itself still hides them.
    assert "s3cret" not in repr(kafka) and "keypass" not in repr(kafka)


def test_ssl_only_sets_just_the_given_files(pem_files) -> None:
    options = client_options(
        KafkaSettings(security_protocol="SSL", ssl_cafile=pem_files["ca"]), "b:1"
    )
    assert options["security_protocol"] == "SSL"
    assert options["ssl_cafile"] == pem_files["ca"]
    assert not (SECURITY_KEYS - {"ssl_cafile"}) & options.keys()
