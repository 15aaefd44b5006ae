"""Replay: turn a CSV file into time-ordered events for `lstmd produce --csv`.

No pandas, so replay works without the demo extra; event times are read by the daemon's own
`parse_ts`. Nothing is lost: a row that
cannot become a valid event is still sent, carrying its raw cells, so that the daemon
dead-letters it with a reason instead of the row silently vanishing here.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

from daemon.core.events import parse_ts

# JSON-style numbers only: float() would also take "nan", "inf" and "1_000".
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def csv_messages(
    path: Path,
    key_col: str,
    ts_col: str,
    feature_cols: Sequence[str],
    target_cols: Sequence[str] = (),
) -> list[tuple[bytes | None, bytes]]:
    """Read a CSV file into (Kafka key, JSON value) messages sorted by ts.

    The sort is stable, so rows of one key with equal ts keep their file order. Rows with a ts
    that is not a time or a feature/target cell that is not a finite number come after all
    others, in file order, with those cells as JSON strings.

    Args:
        path: The CSV file (UTF-8, with a header row; a BOM is allowed).
        key_col: Column holding the event key; an empty cell gives an event with no key.
        ts_col: Column holding epoch seconds or an RFC 3339 / ISO 8601 time (naive means UTC).
        feature_cols: Feature columns, in event order.
        target_cols: Target columns (supervised mode); empty for forecast mode.

    Returns:
        The messages; the Kafka key is the UTF-8 event key, or None when the key is empty.

    Raises:
        ValueError: If the file has no header or lacks one of the named columns.
    """
    # utf-8-sig drops a BOM, which would otherwise glue itself to the first column's name.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header row")
        index = _column_index(header, [key_col, ts_col, *feature_cols, *target_cols], path)
        good: list[tuple[float, tuple[bytes | None, bytes]]] = []
        bad: list[tuple[bytes | None, bytes]] = []
        for row in reader:
            if not row:
                continue  # csv yields [] for blank lines; they are not rows.
            cells = {name: row[i] if i < len(row) else "" for name, i in index.items()}
            ts, message = _row_message(cells, key_col, ts_col, feature_cols, target_cols)
            if ts is None:
                bad.append(message)
            else:
                good.append((ts, message))
    good.sort(key=lambda pair: pair[0])
    return [message for _, message in good] + bad


def _column_index(header: list[str], wanted: list[str], path: Path) -> dict[str, int]:
    """Map each wanted column name to its position in the header."""
    missing = [name for name in dict.fromkeys(wanted) if name not in header]
    if missing:
        raise ValueError(
            f"{path}: no column(s) {', '.join(map(repr, missing))}; "
            f"available: {', '.join(map(repr, header))}"
        )
    return {name: header.index(name) for name in wanted}


def _row_message(
    cells: dict[str, str],
    key_col: str,
    ts_col: str,
    feature_cols: Sequence[str],
    target_cols: Sequence[str],
) -> tuple[float | None, tuple[bytes | None, bytes]]:
    """Build one row's message; the ts is None when the row is bad and must sort last."""
    ts = cell_ts(cells[ts_col])
    features = [_number_or_raw(cells[name]) for name in feature_cols]
    target = [_number_or_raw(cells[name]) for name in target_cols]
    event: dict[str, object] = {}
    key = cells[key_col]
    if key.strip():
        event["key"] = key
    event["ts"] = cells[ts_col] if ts is None else ts
    event["features"] = features
    if target_cols:
        event["target"] = target
    value = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    message = (key.encode() if "key" in event else None, value)
    row_ok = ts is not None and not any(isinstance(v, str) for v in [*features, *target])
    return (ts if row_ok else None), message


def _number_or_raw(cell: str) -> float | str:
    """Return the cell as a finite float, or the raw cell when it is not one."""
    number = _finite_number(cell)
    return cell if number is None else number


def _finite_number(cell: str) -> float | None:
    """Return the cell as a finite float, or None."""
    text = cell.strip()
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def cell_ts(cell: str) -> float | None:
    """Return a ts cell as epoch seconds, or None when it is not a time.

    A CSV cell is always text: a number in it is epoch seconds; any other text goes to the
    daemon's own `parse_ts`, except that a time without an offset, or a date alone (midnight),
    is taken as UTC (a CSV export rarely carries offsets; the daemon itself refuses them).

    Args:
        cell: The ts cell as read from the file.

    Returns:
        Epoch seconds, or None.
    """
    number = _finite_number(cell)
    if number is not None:
        return number
    try:
        return parse_ts(cell, naive_tz=UTC)
    except ValueError:
        return None
