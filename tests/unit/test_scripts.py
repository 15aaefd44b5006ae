"""The README's test command installs its Debian tools as root and names them otherwise."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-deps.sh"


def _run(tmp_path: Path, uid: int, tools: tuple[str, ...]) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for name in ("id", *tools):
        path = bin_dir / name
        if not path.exists():
            path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(bin_dir)},
    )


def test_without_root_it_stops_with_the_one_apt_get_line(tmp_path):
    done = _run(tmp_path, 1000, tools=("promtool",))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.endswith("apt-get install -y --no-install-recommends kcat systemd")


def test_with_every_tool_present_it_does_nothing(tmp_path):
    done = _run(tmp_path, 1000, tools=("kcat", "promtool", "systemd-analyze"))
    assert done.returncode == 0 and done.stderr == ""
