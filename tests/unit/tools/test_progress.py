"""Tests for the progress display, with a fake clock."""

from __future__ import annotations

import io

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


def test_tty_redraws_one_line_at_most_every_interval() -> None:
    stream, clock = FakeTty(), FakeClock()
    progress = Progress(100, "train", stream, min_interval_s=0.25, clock=clock)
    for done in range(1, 101):
        clock.now += 0.0625
        progress.update(done, loss=0.5)
    progress.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    draws = text.split("\r")[1:]
    assert len(draws) == 26  # 6.25 s at one draw per 0.25 s, plus the final line
    assert "[" in draws[0] and "1/100" in draws[0] and "ETA" in draws[0] and "loss=0.5" in draws[0]
    assert "97/100" in draws[-2]  # the last redraw; close() then writes the final line
    assert draws[-1].startswith("train: 100 done in 6.2s (16.0/s)")


def test_tty_pads_over_a_longer_previous_line() -> None:
    stream, clock = FakeTty(), FakeClock()
    progress = Progress(10, "x", stream, min_interval_s=0, clock=clock)
    progress.update(1, note="a-long-field-value")
    progress.update(2)
    first, second = stream.getvalue().split("\r")[1:]
    assert len(second) == len(first)


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
