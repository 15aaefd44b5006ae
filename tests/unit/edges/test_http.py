"""The HTTP endpoints stay answerable under idle and slow clients (DESIGN §11): idle sockets cost
no thread, a slow request is dropped after the handler timeout, idle ones after the idle
timeout."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from daemon.edges import http
from daemon.edges.http import EndpointServer


@pytest.fixture
def server():
    registry = CollectorRegistry()
    Counter("lstmd_probe", "A metric to find.", registry=registry).inc()
    running = EndpointServer(
        "127.0.0.1", 0, registry, health=lambda: (True, ""), ready=lambda: (False, "not yet")
    )
    yield running
    running.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_metrics_still_answer_while_200_idle_sockets_are_held(server) -> None:
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    try:
        time.sleep(0.3)  # a thread-per-connection server would have started 200 by now
        assert threading.active_count() <= threads_before + http.WORKERS
        started = time.monotonic()
        status, body = _get(server.port, "/metrics")
        assert status == 200 and b"lstmd_probe_total 1.0" in body
        assert _get(server.port, "/readyz") == (503, b"not yet\n")
        assert time.monotonic() - started < 2.0
    finally:
        for conn in idle:
            conn.close()


def test_a_request_that_never_finishes_is_dropped_after_the_handler_timeout(
    server, monkeypatch
) -> None:
    monkeypatch.setattr(http._Handler, "timeout", 0.3)
    slow = socket.create_connection(("127.0.0.1", server.port))
    try:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never end
        slow.settimeout(5)
        assert slow.recv(100) == b""  # closed by the server, not answered
    finally:
        slow.close()
    assert _get(server.port, "/healthz") == (200, b"ok\n")


def test_an_idle_socket_is_closed_after_the_idle_timeout(server, monkeypatch) -> None:
    monkeypatch.setattr(http, "IDLE_TIMEOUT_S", 0.2)
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        idle.settimeout(5)
        assert idle.recv(100) == b""
    finally:
        idle.close()
