"""Tests for CSV replay: ordering, ts formats, targets, bad rows, BOM, missing columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.core.events import parse_ts
from daemon.tools.replay import cell_ts, csv_messages

JAN_1_2024 = 1704067200.0


def _write(tmp_path: Path, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / "events.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _events(messages: list[tuple[bytes | None, bytes]]) -> list[dict]:
    return [json.loads(value) for _, value in messages]


def test_sorted_by_ts_across_formats(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "id,when,a,b\n"
        "s1,2024-01-01T00:00:10Z,1,2\n"
        "s2,1704067205,3,4\n"
        "s1,2024-01-01,5,6\n"
        "s2,2024-01-01T01:00:00+01:00,7,8\n"
        "s1,2024-01-01 00:00:20.5,9,10\n",
    )
    messages = csv_messages(path, "id", "when", ["a", "b"])
    events = _events(messages)
    # The +01:00 row is 2024-01-01T00:00Z too: the stable sort keeps it after the date-only row.
    assert [e["ts"] for e in events] == [
        JAN_1_2024,
        JAN_1_2024,
        JAN_1_2024 + 5,
        JAN_1_2024 + 10,
        JAN_1_2024 + 20.5,
    ]
    assert [e["features"] for e in events] == [[5, 6], [7, 8], [3, 4], [1, 2], [9, 10]]
    assert [k for k, _ in messages] == [b"s1", b"s2", b"s2", b"s1", b"s1"]
    assert events[0] == {"key": "s1", "ts": JAN_1_2024, "features": [5.0, 6.0]}


def test_target_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "k,t,x,y1,y2\nA,1,0.5,1.5,-2e3\n")
    (event,) = _events(csv_messages(path, "k", "t", ["x"], ["y1", "y2"]))
    assert event == {"key": "A", "ts": 1.0, "features": [0.5], "target": [1.5, -2000.0]}


def test_bad_rows_are_sent_last_with_raw_cells(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "k,t,x,y\nA,yesterday,1,2\nA,5,1,2\nB,3,abc,2\nA,4,1,nan\nC,1,1,2\nD,2,1e999,2\nE,6\n",
    )
    events = _events(csv_messages(path, "k", "t", ["x"], ["y"]))
    assert [e["key"] for e in events] == ["C", "A", "A", "B", "A", "D", "E"]
    good, bad = events[:2], events[2:]
    assert [e["ts"] for e in good] == [1.0, 5.0]
    assert bad[0] == {"key": "A", "ts": "yesterday", "features": [1.0], "target": [2.0]}
    assert bad[1] == {"key": "B", "ts": 3.0, "features": ["abc"], "target": [2.0]}
    assert bad[2]["target"] == ["nan"]
    assert bad[3]["features"] == ["1e999"]
    assert bad[4] == {"key": "E", "ts": 6.0, "features": [""], "target": [""]}  # short row


def test_empty_key_gives_an_event_without_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "k,t,x\n,1,2\n  ,2,3\nA,3,4\n")
    messages = csv_messages(path, "k", "t", ["x"])
    assert [k for k, _ in messages] == [None, None, b"A"]
    assert [("key" in e) for e in _events(messages)] == [False, False, True]


def test_bom_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "k,t,x\r\nA,1,2\r\n\r\nB,0,3\r\n", bom=True)
    events = _events(csv_messages(path, "k", "t", ["x"]))
    assert [e["key"] for e in events] == ["B", "A"]


def test_unicode_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "k,t,x\nZürich,1,2\n")
    ((kafka_key, value),) = csv_messages(path, "k", "t", ["x"])
    assert kafka_key == "Zürich".encode()
    assert json.loads(value)["key"] == "Zürich"


def test_missing_columns_error_names_them(tmp_path: Path) -> None:
    path = _write(tmp_path, "k,t,x\nA,1,2\n")
    with pytest.raises(ValueError) as info:
        csv_messages(path, "key", "t", ["x", "y"], ["z"])
    message = str(info.value)
    assert "\n" not in message
    assert "'key', 'y', 'z'" in message
    assert "available: 'k', 't', 'x'" in message


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        csv_messages(_write(tmp_path, ""), "k", "t", ["x"])


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("1700000000", 1700000000.0),
        (" -1.5e2 ", -150.0),
        ("2024-01-01", JAN_1_2024),
        ("2024-01-01t00:00:00z", JAN_1_2024),
        ("2024-01-01T02:00:00+02:00", JAN_1_2024),
        ("2024-01-01T00:00:00.250Z", JAN_1_2024 + 0.25),
        ("", None),
        ("inf", None),
        ("1_000", None),
        ("2024-13-01", None),
    ],
)
def test_cell_ts(cell: str, expected: float | None) -> None:
    assert cell_ts(cell) == expected


@pytest.mark.parametrize(
    "cell", ["2024-01-01T00:00:00Z", "2024-01-01t00:00:00+01:00", "2024-06-30 12:00:00-07:00"]
)
def test_cell_ts_reads_offset_times_as_the_daemon_does(cell: str) -> None:
    # A replayed row and the same time sent straight to the daemon land at the same instant.
    assert cell_ts(cell) == parse_ts(cell)


def test_cell_ts_takes_naive_times_as_utc_where_the_daemon_refuses_them() -> None:
    assert cell_ts("2024-01-01T00:00:00") == JAN_1_2024
    with pytest.raises(ValueError, match="no time zone offset"):
        parse_ts("2024-01-01T00:00:00")
