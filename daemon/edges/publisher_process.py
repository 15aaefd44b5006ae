"""The predictions' producer in a process of its own: the loop thread only frames the records.

Why: the loop is one Python thread holding the GIL, and kafka-python's per-record send took
about 14% of its time (a profile of `bench/end_to_end.py` on Birthdays). A child process runs a
`Publisher` on another core; the loop hands it each poll's predictions in one pipe write.

What goes where: keyed records without headers (predictions) go to the child. Dead letters
(which carry headers), metrics-topic messages (no key) and anything else go through an
in-process `Publisher`, as before; they are few.

Order and durability: one pipe carries records and commands in order, so `flush` returns only
once every record handed over before it was acknowledged or failed, as the in-process
`Publisher.flush` does; the checkpoint commits after it, as before.

Failure: a child that died makes the next hand-over or flush raise `PublisherGone`; the loop then
exits without snapshot or commit, and its supervisor restarts it (at-least-once, as after any
crash). A daemon that died (kill -9) closes the pipe: the child delivers what it holds and exits.

Frames (both ways): a 4-byte little-endian length, then the body. Parent to child: the set-up
(JSON, first), `R` records of one topic, `F` flush and `C` close (each with a sequence number
and a timeout). Child to parent: one JSON reply per `F` and `C` with the child's counters.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from typing import IO, Any, BinaryIO

from daemon.edges.messages import RawMessage
from daemon.edges.publisher import Publisher
from daemon.settings import KafkaSettings

log = logging.getLogger("lstmd.kafka")

# Records queued before a hand-over even if the loop has not asked for one: bounds the memory
# a large poll holds, and keeps the child busy while the loop is still inside the poll.
PUSH_EVERY_RECORDS = 2000
PIPE_BYTES = 1 << 20
# How long past its own timeout a flush or close waits for the child's reply.
REPLY_GRACE_S = 10.0

# The Kafka settings a `Publisher` reads; the child validates only these.
PUBLISHER_SETTINGS = frozenset(
    {
        "producer_linger_ms",
        "producer_batch_bytes",
        "max_request_size",
        "dead_letter_max_bytes",
    }
)

_LENGTH = struct.Struct("<I")
_COMMAND = struct.Struct("<cQd")  # kind, sequence number, timeout in seconds


class PublisherGone(RuntimeError):
    """The publishing process exited: records handed to it may not have been delivered."""


class ProcessPublisher:
    """A `Sink` whose predictions are produced by a child process (see the module docstring).

    Args:
        options: from `client_options`; sent to the child over its pipe, never on its command
            line or in its environment (they may hold secrets).
        kafka: supplies the batching settings.
    """

    def __init__(self, options: dict[str, Any], kafka: KafkaSettings) -> None:
        # Dead letters and metrics messages: few, and sent here.
        self._local = Publisher(options, kafka)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "daemon.edges.publisher_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        if self._process.stdin is None or self._process.stdout is None:
            raise PublisherGone("the publishing process has no pipes")
        self._to_child: IO[bytes] = self._process.stdin
        _widen(self._to_child.fileno())
        self._replies: IO[bytes] = self._process.stdout
        self._sequence = 0
        self._topic: str | None = None  # the topic of the queued records
        self._keys: list[bytes] = []
        self._values: list[bytes] = []
        # The child's counters as of its last reply (cumulative).
        self._child: dict[str, Any] = {"delivered": 0, "failed": 0, "failed_by_topic": {}}
        self._child_undeliverable: Counter[tuple[str, str]] = Counter()
        self._closed = False
        # A checkpoint may run on a rebalance worker while the loop waits in poll: one writer
        # and one request-reply at a time on the pipe.
        self._pipe_lock = threading.RLock()
        self._write(json.dumps(_set_up(options, kafka)).encode())
        log.info("publishing process started", extra={"pid": self._process.pid})

    # ---- the Sink -----------------------------------------------------------------------

    @property
    def truncated(self) -> int:
        return self._local.truncated

    @property
    def delivered(self) -> int:
        """Records acknowledged: the child's as of its last flush, the local ones as settled."""
        return self._local.delivered + int(self._child["delivered"])

    @property
    def failed(self) -> int:
        return self._local.failed + int(self._child["failed"])

    @property
    def failed_by_topic(self) -> Counter[str]:
        return self._local.failed_by_topic + Counter(self._child["failed_by_topic"])

    @property
    def undeliverable(self) -> Counter[tuple[str, str]]:
        return self._local.undeliverable + self._child_undeliverable

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record for the child (keyed, no headers) or send it in process."""
        if key is None or headers:
            self._local.send(topic, key, value, headers)
            return
        if topic != self._topic:
            self.push()
            self._topic = topic
        self._keys.append(key)
        self._values.append(value)
        if len(self._keys) >= PUSH_EVERY_RECORDS:
            self.push()

    def send_dead_letter(self, topic: str, raw: RawMessage, reason: str, detail: str) -> None:
        self._local.send_dead_letter(topic, raw, reason, detail)

    def push(self) -> None:
        """Hand the queued records to the child now (the loop calls this once per poll)."""
        with self._pipe_lock:
            keys, values, topic = self._keys, self._values, self._topic
            if not keys or topic is None:
                return
            self._keys, self._values = [], []
            self._write(encode_records(topic, keys, values))

    def flush(self, timeout_s: float) -> int:
        """Wait for every record handed over so far; return how many failed since the last flush.

        Raises:
            TimeoutError: records were still in flight after `timeout_s`.
            PublisherGone: the child exited.
        """
        self.push()
        reply = self._ask(b"F", timeout_s)
        failed_before = int(self._child["failed"])
        self._take(reply)
        if reply.get("timeout"):
            raise TimeoutError(f"producer flush did not finish in {timeout_s:g} s")
        return int(reply["failed"]) - failed_before + self._local.flush(timeout_s)

    def close(self, timeout_s: float = REPLY_GRACE_S) -> None:
        """Deliver what can be delivered within `timeout_s`, then stop the child (again: a
        no-op)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.push()
            self._take(self._ask(b"C", timeout_s))
        except (PublisherGone, TimeoutError) as exc:
            log.error("publishing process did not close cleanly", extra={"error": str(exc)})
        finally:
            self._to_child.close()
            self._replies.close()
            try:
                self._process.wait(timeout=REPLY_GRACE_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._local.close(timeout_s)

    # ---- the pipe -----------------------------------------------------------------------

    def _write(self, body: bytes) -> None:
        data = memoryview(_LENGTH.pack(len(body)) + body)
        try:
            while data:  # an unbuffered pipe may take part of a large write
                written = self._to_child.write(data)
                data = data[written or 0 :]
        except (ValueError, OSError) as exc:  # BrokenPipeError, or a pipe already closed
            raise PublisherGone(f"the publishing process exited ({self._exit_status()})") from exc

    def _ask(self, kind: bytes, timeout_s: float) -> dict[str, Any]:
        """Send a command and return the child's reply to it (older replies are skipped)."""
        with self._pipe_lock:
            self._sequence += 1
            self._write(_COMMAND.pack(kind, self._sequence, timeout_s))
            deadline = time.monotonic() + timeout_s + REPLY_GRACE_S
            while True:
                reply = json.loads(self._read_frame(deadline))
                if reply["sequence"] == self._sequence:
                    return dict(reply)

    def _read_frame(self, deadline: float) -> bytes:
        size = _LENGTH.unpack(self._read_exactly(_LENGTH.size, deadline))[0]
        return self._read_exactly(size, deadline)

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._replies], [], [], remaining)[0]:
                raise TimeoutError("the publishing process did not answer in time")
            chunk = os.read(self._replies.fileno(), size)
            if not chunk:
                raise PublisherGone(f"the publishing process exited ({self._exit_status()})")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _take(self, reply: dict[str, Any]) -> None:
        self._child = reply
        self._child_undeliverable = Counter(
            {(topic, reason): count for topic, reason, count in reply["undeliverable"]}
        )

    def _exit_status(self) -> str:
        code = self._process.poll()
        return "still running" if code is None else f"exit status {code}"


def _widen(pipe: int) -> None:
    """Let a pipe hold 1 MiB (Linux; 64 KiB by default): a poll's records fit in one write,
    so the loop does not wait on a child still sending the poll before."""
    try:
        import fcntl

        fcntl.fcntl(pipe, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # another OS, or above /proc/sys/fs/pipe-max-size: the default size works too


def encode_records(topic: str, keys: list[bytes], values: list[bytes]) -> bytes:
    """Frame records of one topic: `R`, the topic, the count, all lengths, then the bytes."""
    name = topic.encode("utf-8")
    lengths = array("I", map(len, keys))
    lengths.extend(map(len, values))
    head = b"R" + struct.pack("<HI", len(name), len(keys)) + name + lengths.tobytes()
    return head + b"".join(keys) + b"".join(values)


def decode_records(body: bytes) -> tuple[str, list[bytes], list[bytes]]:
    """Return the topic, keys and values of a frame made by `encode_records`."""
    name_size, count = struct.unpack_from("<HI", body, 1)
    start = 1 + struct.calcsize("<HI")
    topic = body[start : start + name_size].decode("utf-8")
    lengths = array("I")
    lengths.frombytes(body[start + name_size : start + name_size + 8 * count])
    position = start + name_size + 8 * count
    keys, values = [], []
    for size in lengths[:count]:
        keys.append(body[position : position + size])
        position += size
    for size in lengths[count:]:
        values.append(body[position : position + size])
        position += size
    return topic, keys, values


def _set_up(options: dict[str, Any], kafka: KafkaSettings) -> dict[str, Any]:
    """The child's set-up: client options, Kafka settings and how this process logs."""
    from daemon.service.logs import JsonFormatter

    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    return {
        "options": options,
        # Only what a Publisher reads (batching and sizes): security reaches the child in
        # `options`, and a dump without secrets would fail the SASL settings' own check there.
        "kafka": kafka.model_dump(mode="json", include=set(PUBLISHER_SETTINGS)),
        "log_level": logging.getLevelName(root.level),
        "log_format": "json" if isinstance(formatter, JsonFormatter) else "text",
    }


# ---- the child ---------------------------------------------------------------------------


def _counters(publisher: Publisher, sequence: int, timed_out: bool) -> bytes:
    return json.dumps(
        {
            "sequence": sequence,
            "timeout": timed_out,
            "delivered": publisher.delivered,
            "failed": publisher.failed,
            "failed_by_topic": dict(publisher.failed_by_topic),
            "undeliverable": [[t, r, n] for (t, r), n in publisher.undeliverable.items()],
        }
    ).encode()


def _read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    size = _LENGTH.unpack(head)[0]
    body = stream.read(size)
    return body if len(body) == size else None


def _serve(publisher: Publisher, commands: BinaryIO, replies: BinaryIO) -> None:
    """Produce what the parent hands over and answer its commands until close or EOF."""
    while (body := _read_frame(commands)) is not None:
        if body[:1] == b"R":
            topic, keys, values = decode_records(body)
            for key, value in zip(keys, values, strict=True):
                publisher.send(topic, key, value)
            continue
        kind, sequence, timeout_s = _COMMAND.unpack(body)
        timed_out = False
        try:
            if kind == b"C":
                publisher.close(timeout_s)
            else:
                publisher.flush(timeout_s)
        except TimeoutError:
            timed_out = True
        reply = _counters(publisher, sequence, timed_out)
        replies.write(_LENGTH.pack(len(reply)) + reply)
        replies.flush()
        if kind == b"C":
            return
    publisher.close(REPLY_GRACE_S)  # the parent is gone: deliver what is here, then leave


def main() -> int:
    """The child: read the set-up, then serve the parent over stdin and stdout."""
    # The parent decides when this process stops (close, or its end): a Ctrl-C or a SIGTERM
    # sent to the whole process group must not drop records handed over but not yet delivered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    commands, replies = sys.stdin.buffer, sys.stdout.buffer
    first = _read_frame(commands)
    if first is None:
        return 0
    set_up = json.loads(first)
    from daemon.service.logs import configure_logging

    configure_logging(set_up["log_level"], set_up["log_format"])
    publisher = Publisher(set_up["options"], KafkaSettings.model_validate(set_up["kafka"]))
    _serve(publisher, commands, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
