"""HTTP endpoints on one port: `/metrics` (Prometheus), `/healthz` and `/readyz`.

Bounded (DESIGN §11): an idle connection costs a file descriptor, not a thread. One thread waits
on every open socket; a socket is handed to a small pool of workers only once its request bytes
arrive, and each worker reads and answers under a socket timeout. Idle sockets are closed after
`IDLE_TIMEOUT_S`, and past `MAX_OPEN` connections the oldest idle one is closed. So 200 idle
sockets (or a slow-loris client) cannot keep a Prometheus scrape or a kubelet probe from being
answered.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# A probe answers (ok, reason); the reason is shown when not ok.
Probe = Callable[[], tuple[bool, str]]

# Workers answering requests whose bytes have arrived: a scrape takes milliseconds.
WORKERS = 4
# Reading a request and writing its answer, per socket operation: a client slower than this is
# dropped (a slow-loris holds a worker at most this long).
HANDLER_TIMEOUT_S = 5.0
# A connection that sends nothing is closed after this long.
IDLE_TIMEOUT_S = 10.0
# Open connections (idle ones included); past it the oldest idle one is closed.
MAX_OPEN = 1024
_SELECT_S = 0.5


class _Listener(HTTPServer):
    # socketserver's default backlog of 5 drops connection bursts into SYN retries of 1-3 s.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, Probe]] = {}
    registry: CollectorRegistry
    timeout = HANDLER_TIMEOUT_S

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path in self.routes:
            ok, reason = self.routes[path]()
            body = b"ok\n" if ok else f"{reason}\n".encode()
            self._send(200 if ok else 503, body, "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds are not worth a log line


class EndpointServer:
    """Serve metrics and probes from a daemon thread until `close()`."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: Probe, ready: Probe
    ) -> None:
        handler = type(
            "Handler",
            (_Handler,),
            {"routes": {"/healthz": health, "/readyz": ready}, "registry": registry},
        )
        self._server = _Listener((host, port), handler)
        self._server.socket.setblocking(False)
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="lstmd-http")
        self._selector = selectors.DefaultSelector()
        self._idle: dict[socket.socket, tuple[float, object]] = {}  # socket -> (since, address)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lstmd-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def close(self) -> None:
        """Stop serving, close every connection and free the port."""
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in list(self._idle):
            self._drop(conn)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._selector.close()
        self._server.server_close()

    # ---- the waiting thread -------------------------------------------------------------

    def _serve(self) -> None:
        listener = self._server.socket
        self._selector.register(listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=_SELECT_S):
                if key.fileobj is listener:
                    self._accept(listener)
                else:
                    self._hand_over(key.fileobj)  # type: ignore[arg-type]
            self._close_idle(time.monotonic())

    def _accept(self, listener: socket.socket) -> None:
        while True:  # everything waiting in the backlog
            try:
                conn, address = listener.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                return
            conn.setblocking(True)
            if len(self._idle) >= MAX_OPEN:
                self._drop(min(self._idle, key=lambda c: self._idle[c][0]))
            self._idle[conn] = (time.monotonic(), address)
            self._selector.register(conn, selectors.EVENT_READ)

    def _hand_over(self, conn: socket.socket) -> None:
        _, address = self._idle.pop(conn)
        self._selector.unregister(conn)
        self._pool.submit(self._answer, conn, address)

    def _close_idle(self, now: float) -> None:
        for conn, (since, _) in list(self._idle.items()):
            if now - since > IDLE_TIMEOUT_S:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._idle.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    # ---- a worker -----------------------------------------------------------------------

    def _answer(self, conn: socket.socket, address: object) -> None:
        try:
            conn.settimeout(HANDLER_TIMEOUT_S)
            self._server.finish_request(conn, address)
        except OSError:
            pass  # the client went away or was too slow: nothing to answer
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
