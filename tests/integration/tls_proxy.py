"""A TLS-terminating proxy the test owns, in front of the embedded broker.

Tansu 0.6.0 cannot serve TLS itself: its `--cert` and `--key` flags belong to one clap group, so
either one alone is accepted and both together are refused ("the argument '--cert <CERT>'
cannot be used with '--key <KEY>'"), and it needs both. Clients here speak real TLS (Python's
OpenSSL) to this proxy, which forwards the plain Kafka protocol to the broker; with a client CA
it also demands and verifies a client certificate (mutual TLS).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

from tcp_proxy import _close

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


# ---- SASL/SCRAM in front of the broker -----------------------------------------------------
# Tansu 0.6.0 can demand SASL (--authentication: SCRAM-SHA-256/512, OAUTHBEARER; no PLAIN), but
# its memory storage keeps no SCRAM credentials (upsert is a no-op, lookup answers none), so
# every login ends in "e=unknown-user" and a conforming client cannot authenticate. The proxy
# below is the authenticating broker edge instead: it answers SaslHandshake and the SCRAM
# exchange itself (RFC 5802, checking the client's proof against its own user), and only then
# forwards the connection to the broker in the clear.

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_SASL_FAILED, _UNSUPPORTED_MECHANISM = 58, 33
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def _read_frame(sock: socket.socket) -> bytes | None:
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    return _read_exactly(sock, int.from_bytes(head, "big"))


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _to_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class ScramUser:
    """One user's SCRAM credentials, as a broker stores them (RFC 5802)."""

    def __init__(self, name: str, password: str, iterations: int = 4096) -> None:
        import hashlib
        import os as _os

        self.name = name
        self.salt = _os.urandom(16)
        self.iterations = iterations
        self._password = password.encode()
        self._hashlib = hashlib

    def keys(self, mechanism: str) -> tuple[bytes, bytes]:
        import hmac

        algorithm = _HASHES[mechanism]
        salted = self._hashlib.pbkdf2_hmac(algorithm, self._password, self.salt, self.iterations)
        client_key = hmac.new(salted, b"Client Key", algorithm).digest()
        stored = self._hashlib.new(algorithm, client_key).digest()
        return stored, hmac.new(salted, b"Server Key", algorithm).digest()


class SaslTlsProxy(TlsProxy):
    """TLS, then SASL/SCRAM answered here for `user`, then the broker in the clear."""

    def __init__(
        self, target: tuple[str, int], server_pem: Path, user: ScramUser, port: int = 0
    ) -> None:
        super().__init__(target, server_pem, client_ca=None, port=port)
        self._user = user
        self.logins: list[tuple[str, str, bool]] = []  # (user, mechanism, accepted)

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(self._target, timeout=5)
        except (ssl.SSLError, OSError):
            self.handshakes_failed += 1
            _close(raw)
            return
        upstream.settimeout(None)
        self._open += [client, upstream]
        try:
            authenticated = self._authenticate(client, upstream)
        except (OSError, ValueError, IndexError, KeyError):
            authenticated = False
        if not authenticated:
            _close(client)
            _close(upstream)
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def _authenticate(self, client: socket.socket, upstream: socket.socket) -> bool:
        mechanism = ""
        server_first = client_first_bare = b""
        nonce = b""
        while (frame := _read_frame(client)) is not None:
            api_key = int.from_bytes(frame[0:2], "big", signed=True)
            version = int.from_bytes(frame[2:4], "big")
            correlation = frame[4:8]
            body_at = 10 + max(0, int.from_bytes(frame[8:10], "big", signed=True))  # client_id
            if api_key == _API_VERSIONS:  # the broker's own answer
                upstream.sendall(len(frame).to_bytes(4, "big") + frame)
                answer = _read_frame(upstream)
                if answer is None:
                    return False
                client.sendall(len(answer).to_bytes(4, "big") + answer)
            elif api_key == _SASL_HANDSHAKE:
                size = int.from_bytes(frame[body_at : body_at + 2], "big")
                mechanism = frame[body_at + 2 : body_at + 2 + size].decode()
                error = 0 if mechanism in _HASHES else _UNSUPPORTED_MECHANISM
                names = b"".join(len(m).to_bytes(2, "big") + m.encode() for m in sorted(_HASHES))
                body = error.to_bytes(2, "big") + len(_HASHES).to_bytes(4, "big") + names
                client.sendall((len(body) + 4).to_bytes(4, "big") + correlation + body)
                if error:
                    return False
            elif api_key == _SASL_AUTHENTICATE and version >= 2:
                at = body_at + 1  # the request header's empty tagged fields
                length, at = _uvarint(frame, at)
                auth = frame[at : at + length - 1]
                if not server_first:
                    client_first_bare = auth.split(b",", 2)[2]
                    fields = dict(p.split(b"=", 1) for p in client_first_bare.split(b","))
                    if fields[b"n"].decode() != self._user.name:
                        self.logins.append((fields[b"n"].decode(), mechanism, False))
                        self._answer(client, correlation, _SASL_FAILED, b"")
                        return False
                    import base64
                    import os as _os

                    nonce = fields[b"r"] + base64.b64encode(_os.urandom(12)).replace(b"=", b"")
                    salt = base64.b64encode(self._user.salt)
                    server_first = b"r=" + nonce + b",s=" + salt + b",i=%d" % self._user.iterations
                    self._answer(client, correlation, 0, server_first)
                    continue
                accepted, final = self._verify(mechanism, client_first_bare, server_first, auth)
                self.logins.append((self._user.name, mechanism, accepted))
                self._answer(client, correlation, 0 if accepted else _SASL_FAILED, final)
                return accepted
            else:
                return False  # anything else before authenticating: refused
        return False

    def _verify(
        self, mechanism: str, client_first_bare: bytes, server_first: bytes, client_final: bytes
    ) -> tuple[bool, bytes]:
        import base64
        import hashlib
        import hmac

        without_proof, _, proof = client_final.rpartition(b",p=")
        message = client_first_bare + b"," + server_first + b"," + without_proof
        stored, server_key = self._user.keys(mechanism)
        algorithm = _HASHES[mechanism]
        signature = hmac.new(stored, message, algorithm).digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if not hmac.compare_digest(hashlib.new(algorithm, client_key).digest(), stored):
            return False, b""
        return True, b"v=" + base64.b64encode(hmac.new(server_key, message, algorithm).digest())

    @staticmethod
    def _answer(client: socket.socket, correlation: bytes, error: int, auth: bytes) -> None:
        message = b"NONE" if not error else b"authentication failed"
        body = (
            error.to_bytes(2, "big")
            + _to_uvarint(len(message) + 1)
            + message
            + _to_uvarint(len(auth) + 1)
            + auth
            + (60_000 * 60).to_bytes(8, "big")  # session lifetime: an hour, in ms
            + b"\x00"
        )
        frame = correlation + b"\x00" + body  # response header v1: its empty tagged fields
        client.sendall(len(frame).to_bytes(4, "big") + frame)
