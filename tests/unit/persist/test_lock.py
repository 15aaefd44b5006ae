"""The snapshot directory lock, with real second processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.persist.lock import LOCK_FILE_NAME, DirectoryLock, DirectoryLocked

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from daemon.persist.lock import DirectoryLock\n"
    "DirectoryLock(Path(sys.argv[1])).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n"
)


def _holder(directory: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_in_the_same_process_is_refused(tmp_path: Path) -> None:
    refused = pytest.raises(DirectoryLocked, match=rf"pid {os.getpid()} on host ")
    with DirectoryLock(tmp_path), refused:
        DirectoryLock(tmp_path).acquire()
    with DirectoryLock(tmp_path):  # released: free again
        pass


def test_another_live_process_is_named_and_a_killed_one_does_not_block(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(DirectoryLocked) as refused:
            DirectoryLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {proc.pid} on host" in message and "\n" not in message
        assert str(tmp_path) in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    # The lock file is still there with the dead holder's text; the kernel dropped its flock.
    assert str(proc.pid) in (tmp_path / LOCK_FILE_NAME).read_text()
    lock = DirectoryLock(tmp_path)
    lock.acquire()
    assert str(os.getpid()) in (tmp_path / LOCK_FILE_NAME).read_text()
    lock.release()


def test_the_lock_creates_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    start = time.time()
    with DirectoryLock(target) as lock:
        assert lock.path.parent == target
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
        assert float(lock.path.read_text().split('"started": ')[1].rstrip("}")) >= start - 1
