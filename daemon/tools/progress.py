"""Progress: a dependency-free progress display for long work (the demo, CSV replay).

On a terminal it redraws one line in place; elsewhere (CI, log files) it prints a plain line
every 10 % (or every 5 s without a total), so logs stay short and readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

_BAR_WIDTH = 24
_PLAIN_STEP = 0.10
_PLAIN_INTERVAL_S = 5.0


class Progress:
    """Report progress of `total` items of work on a stream.

    Attributes:
        total: How many items make up the work, or None when unknown.
        label: What is being done, shown first on every line.
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        stream: TextIO | None = None,
        min_interval_s: float = 0.2,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the clock.

        Args:
            total: How many items make up the work, or None when unknown.
            label: What is being done.
            stream: Where to write; a TTY gets the redrawn line. None: sys.stderr as it is now,
                not at import, so redirection (and pytest capture) applies.
            min_interval_s: Least time between two redraws on a TTY.
            clock: Monotonic seconds; replaceable for tests.
        """
        self.total = total
        self.label = label
        self._stream = sys.stderr if stream is None else stream
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._tty = _is_tty(self._stream)
        self._start = clock()
        self._last_draw = -float("inf")
        self._last_plain = self._start
        self._plain_step = 0
        self._width = 0
        self._done = 0
        self._closed = False

    def update(self, done: int, **fields: object) -> None:
        """Record that `done` items (an absolute count) are finished, and maybe show it.

        Args:
            done: Items finished so far.
            **fields: Extra values to show, e.g. steps=12.
        """
        if self._closed:
            return
        self._done = done
        now = self._clock()
        if self._tty:
            if now - self._last_draw >= self._min_interval_s:
                self._last_draw = now
                self._redraw(self._tty_line(now, fields))
        elif self._plain_due(now):
            self._write(self._plain_line(now, fields) + "\n")

    def close(self, **fields: object) -> None:
        """Show the final line: items done, rate and elapsed time; later calls do nothing.

        Args:
            **fields: Extra values to show, e.g. steps=12.
        """
        if self._closed:
            return
        self._closed = True
        elapsed = self._clock() - self._start
        line = (
            f"{self.label}: {self._done} done in {_duration(elapsed)} "
            f"({_rate(self._done, elapsed)}/s){_fields(fields)}"
        )
        if self._tty:
            self._redraw(line)
            self._write("\n")
        else:
            self._write(line + "\n")

    def __enter__(self) -> Progress:
        """Return self, so that `with Progress(...) as progress:` closes it at the end."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the display."""
        self.close()

    def _plain_due(self, now: float) -> bool:
        """Decide whether a plain (non-TTY) line is due: each new 10 % step, or every 5 s."""
        if self.total is None:
            if now - self._last_plain < _PLAIN_INTERVAL_S:
                return False
            self._last_plain = now
            return True
        step = int(self._fraction() / _PLAIN_STEP + 1e-9)
        if step <= self._plain_step:
            return False
        self._plain_step = step
        return True

    def _tty_line(self, now: float, fields: dict[str, object]) -> str:
        """Render the redrawn line: bar, percent, count/total, rate, ETA, fields."""
        elapsed = now - self._start
        rate = _rate(self._done, elapsed)
        if self.total is None:
            return f"{self.label} {self._done} {rate}/s {_duration(elapsed)}{_fields(fields)}"
        fraction = self._fraction()
        filled = round(fraction * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        return (
            f"{self.label} [{bar}] {fraction:4.0%} {self._done}/{self.total} {rate}/s "
            f"ETA {self._eta(elapsed)}{_fields(fields)}"
        )

    def _plain_line(self, now: float, fields: dict[str, object]) -> str:
        """Render a plain log line."""
        elapsed = now - self._start
        rate = _rate(self._done, elapsed)
        if self.total is None:
            return (
                f"{self.label}: {self._done} after {_duration(elapsed)} ({rate}/s){_fields(fields)}"
            )
        return (
            f"{self.label}: {self._done}/{self.total} ({self._fraction():.0%}) {rate}/s "
            f"ETA {self._eta(elapsed)}{_fields(fields)}"
        )

    def _fraction(self) -> float:
        """Return the finished fraction in [0, 1]; an empty job (total 0) counts as finished."""
        if not self.total:
            return 1.0
        return min(max(self._done / self.total, 0.0), 1.0)

    def _eta(self, elapsed: float) -> str:
        """Estimate the time left from the average rate so far."""
        if self.total is None or self._done <= 0:
            return "?"
        left = max(self.total - self._done, 0)
        return _duration(elapsed / self._done * left)

    def _redraw(self, line: str) -> None:
        """Overwrite the current terminal line, blanking what a longer previous line left."""
        padding = " " * max(self._width - len(line), 0)
        self._width = len(line)
        self._write("\r" + line + padding)

    def _write(self, text: str) -> None:
        """Write and flush, so the display keeps up even when the stream is buffered."""
        self._stream.write(text)
        self._stream.flush()


def _is_tty(stream: TextIO) -> bool:
    """Return whether the stream is an interactive terminal (closed or odd streams are not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _rate(done: int, elapsed: float) -> str:
    """Format items per second, with precision suited to its size."""
    if elapsed <= 0:
        return "?"
    rate = done / elapsed
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def _duration(seconds: float) -> str:
    """Format seconds as 42.0s, 3m07s or 1h02m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _fields(fields: dict[str, object]) -> str:
    """Format extra fields as ` name=value` pairs."""
    return "".join(f" {name}={value}" for name, value in fields.items())
