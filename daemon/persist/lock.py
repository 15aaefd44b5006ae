"""An exclusive, advisory lock on a snapshot directory: one process owns it at a time.

`fcntl.flock` on a lock file inside the directory. The kernel releases a flock when its holder
dies (also on SIGKILL), so a lock file left behind by a dead process never blocks a new one; the
text in the file (host, pid, start time) only serves to name the holder in the refusal.

Advisory: it stops another lstmd, not a process that ignores flock. flock is local to one
machine and unreliable on some network file systems (NFS before v4, CIFS); a pod's volume is its
own, so that is the case it has to cover.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE_NAME = ".lstmd.lock"


class DirectoryLocked(Exception):
    """Another live process holds the directory; the message names it in one line."""


class DirectoryLock:
    """Hold `directory/.lstmd.lock` exclusively until `release` (or process exit).

    >>> with DirectoryLock(Path("snapshots")):
    ...     ...  # nobody else can hold the directory here
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting and write who holds it.

        Raises:
            DirectoryLocked: a live process holds it; the message names that process.
            OSError: the directory or lock file cannot be created.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise DirectoryLocked(
                f"snapshot.directory {self.directory} is in use by {holder}; stop that process "
                "or give this one its own snapshot.directory"
            ) from None
        _write_holder(fd)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up; the file stays (removing it would race with a new acquirer)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def holder_info() -> dict[str, object]:
    """Return what this process writes into a lock it takes."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder_info()).encode("utf-8"), 0)
    os.fsync(fd)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}  # The holder may be between truncate and write.


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "another process (holder not written yet)"
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(started)))
        if isinstance(started, int | float)
        else "?"
    )
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {when})"
