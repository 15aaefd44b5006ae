"""Tests for the progress display, with a fake clock."""

from __future__ import annotations

import io
import re

from daemon.tools.progress import Progress


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTty(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def test_plain_output_is_bounded_and_ends_with_the_total() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(10_000, "replay", stream, clock=clock)
    for done in range(1, 10_001):
        clock.now += 0.001
        progress.update(done, steps=done // 100)
    progress.close(steps=100)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 11  # 10 %, 20 %, ..., 100 %, then the final line
    assert lines[0].startswith("replay: 1000/10000 (10%)")
    assert "steps=10" in lines[0]
    assert lines[-1] == "replay: 10000 done in 10.0s (1,000/s) steps=100"


def test_plain_output_without_total_every_five_seconds() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(None, "demo", stream, clock=clock)
    for done in range(1, 161):
        clock.now += 0.125  # exact in binary, so the 5 s marks fall on exact updates
        progress.update(done)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # at 5, 10, 15, 20 s, then the final line
    assert lines[0] == "demo: 40 after 5.0s (8.0/s)"
    assert lines[-1] == "demo: 160 done in 20.0s (8.0/s)"


def test_tty_draws_rich_bar_at_most_every_interval_then_the_closing_line() -> None:
    stream, clock = FakeTty(), FakeClock()
    progress = Progress(100, "train", stream, min_interval_s=0.25, clock=clock)
    for done in range(1, 101):
        clock.now += 0.0625
        progress.update(done, loss=0.5)
    progress.close(steps=3)
    text = stream.getvalue()
    draws = re.findall(r"train \S.*?(\d+)/100", text)
    # The first draw at start, one per 0.25 s over 6.25 s of updates, the last one at close.
    assert len(draws) == 27
    assert draws[0] == "0" and draws[1] == "1" and draws[-2] == "97" and draws[-1] == "100"
    assert "ETA" in text and "loss=0.5" in text
    assert text.endswith("train: 100 done in 6.2s (16.0/s) steps=3\n")


def test_tty_clears_the_line_before_every_redraw() -> None:
    stream, clock = FakeTty(), FakeClock()
    progress = Progress(10, "x", stream, min_interval_s=0, clock=clock)
    progress.update(1, note="a-long-field-value")
    progress.update(2)
    progress.close()
    redraws = stream.getvalue().split("\r")[1:]
    assert len(redraws) >= 3
    # Erase-line first, so a shorter line never leaves the end of a longer one behind.
    assert all(redraw.startswith("\x1b[2K") or redraw.startswith("\x1b[1A") for redraw in redraws)


def test_close_is_idempotent_and_context_manager_closes() -> None:
    stream = io.StringIO()
    with Progress(0, "empty", stream) as progress:
        progress.update(0)
    progress.close()
    progress.update(5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[-1].startswith("empty: 0 done in")


def test_default_stream_is_stderr(capsys) -> None:
    progress = Progress(2, "job")
    progress.update(2)
    progress.close()
    assert "job: 2 done" in capsys.readouterr().err
