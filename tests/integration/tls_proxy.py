"""A TLS-terminating proxy the test owns, in front of the embedded broker.

Tansu 0.6.0 cannot serve TLS itself: its `--cert` and `--key` flags belong to one clap group, so
either one alone is accepted and both together are refused ("the argument '--cert <CERT>'
cannot be used with '--key <KEY>'"), and it needs both. Clients here speak real TLS (Python's
OpenSSL) to this proxy, which forwards the plain Kafka protocol to the broker; with a client CA
it also demands and verifies a client certificate (mutual TLS).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from pathlib import Path

HOST = "127.0.0.1"
CHUNK_BYTES = 65536


def make_ca_and_certs(directory: Path) -> dict[str, Path]:
    """Make a CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    files = {name: directory / name for name in ("ca.crt", "ca.key", "server.pem", "client.pem")}
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, cwd=directory)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=lstmd-test-ca")  # fmt: skip
    for name, san in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "")):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=lstmd-{name}")  # fmt: skip
        extra = ["-extfile", f"{name}.ext"] if san else []
        if san:
            (directory / f"{name}.ext").write_text(san + "\n")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra)  # fmt: skip
        pem = (directory / f"{name}.crt").read_text() + (directory / f"{name}.key").read_text()
        (directory / f"{name}.pem").write_text(pem)
    files["client.crt"] = directory / "client.crt"
    files["client.key"] = directory / "client.key"
    return files


class TlsProxy:
    """Terminate TLS on `HOST:port` and forward to `target` in the clear."""

    def __init__(
        self, target: tuple[str, int], server_pem: Path, client_ca: Path | None, port: int = 0
    ) -> None:
        self._target = target
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(server_pem)
        if client_ca is not None:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(client_ca)
        self._listener = socket.create_server((HOST, port))
        self.port = self._listener.getsockname()[1]
        self.handshakes_failed = 0
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def retarget(self, target: tuple[str, int]) -> None:
        self._target = target

    def close(self) -> None:
        _close(self._listener)
        for sock in list(self._open):
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_failed += 1
            _close(raw)
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        self._open += [client, upstream]
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK_BYTES):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
