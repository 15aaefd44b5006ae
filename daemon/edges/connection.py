"""Connection options shared by every Kafka client lstmd makes (consumer, producer, admin)."""

from __future__ import annotations

from typing import Any

from daemon.settings import KafkaSettings

# During a broker outage clients retry connecting with exponential backoff, capped here so that a
# returning broker is found within seconds without hammering one that stays away.
RECONNECT_BACKOFF = {"reconnect_backoff_ms": 100, "reconnect_backoff_max_ms": 5000}


def client_options(kafka: KafkaSettings, bootstrap: str) -> dict[str, Any]:
    """Build the connection options shared by consumers, producers and admin clients.

    Args:
        kafka: the Kafka settings section.
        bootstrap: comma-separated `host:port` list actually used (the embedded broker's address
            when `kafka.bootstrap_servers` is empty).

    Returns:
        kafka-python keyword arguments; security options appear only when set, and secrets are
        unwrapped here and nowhere else.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap.split(",") if s.strip()],
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    optional = {
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_plain_username": kafka.sasl_username,
        "sasl_plain_password": _secret(kafka.sasl_password),
        "ssl_cafile": kafka.ssl_cafile,
        "ssl_certfile": kafka.ssl_certfile,
        "ssl_keyfile": kafka.ssl_keyfile,
        "ssl_password": _secret(kafka.ssl_password),
    }
    options.update({key: value for key, value in optional.items() if value is not None})
    return options


def _secret(value: Any) -> str | None:
    return None if value is None else value.get_secret_value()
