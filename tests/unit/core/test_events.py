"""Decoding: every class of bad event gets its reason; good events come out exact."""

import json
import math
from datetime import UTC, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.events import Event, EventDecoder, Reason, Rejection, decode_event, parse_ts


def _decode(payload, message_key=b"kafka-key", n_features=2, n_targets=1):
    value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_event(value, message_key, n_features, n_targets, max_bytes=4096)


def test_valid_event_with_target_decodes_exactly():
    event = _decode({"key": "s1", "ts": 10.5, "features": [1, 2.5], "target": [3.0]})
    assert isinstance(event, Event)
    assert event.key == "s1" and event.ts == 10.5 and event.reset is False
    np.testing.assert_array_equal(event.features, [1.0, 2.5])
    np.testing.assert_array_equal(event.target, [3.0])


def test_forecast_event_has_no_target_and_falls_back_to_message_key():
    event = _decode({"ts": "2024-01-01T00:00:00Z", "features": [1, 2], "reset": True})
    assert isinstance(event, Event)
    assert event.key == "kafka-key" and event.target is None and event.reset is True
    assert event.ts == 1704067200.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"x" * 5000, Reason.TOO_LARGE),
        (b"{not json", Reason.INVALID_JSON),
        (b"\xff\xfe", Reason.INVALID_JSON),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (b'{"ts": 1, "features": [1, NaN]}', Reason.NON_FINITE),
        (b'{"key": "k", "ts": 1, "features": [1, Infinity]}', Reason.NON_FINITE),
        (b"[" * 3000 + b"]" * 3000, Reason.TOO_LARGE),
    ],
)
def test_malformed_bytes_are_rejected_with_reason(value, reason):
    result = decode_event(value, b"k", 2, 1, max_bytes=4096)
    assert isinstance(result, Rejection)
    assert result.reason == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"ts": 1, "features": [1, 2], "key": 7}, Reason.MISSING_KEY),
        ({"ts": 1, "features": [1, 2]}, Reason.MISSING_KEY),
        ({"key": "k", "features": [1, 2]}, Reason.BAD_TS),
        ({"key": "k", "ts": "yesterday", "features": [1, 2]}, Reason.BAD_TS),
        ({"key": "k", "ts": "2024-01-01T00:00:00", "features": [1, 2]}, Reason.BAD_TS),
        ({"key": "k", "ts": True, "features": [1, 2]}, Reason.BAD_TS),
        ({"key": "k", "ts": 1, "features": [1]}, Reason.BAD_FEATURES),
        ({"key": "k", "ts": 1, "features": [1, "abc"]}, Reason.BAD_FEATURES),
        ({"key": "k", "ts": 1, "features": [1, True]}, Reason.BAD_FEATURES),
        ({"key": "k", "ts": 1, "features": {"a": 1}}, Reason.BAD_FEATURES),
        ({"key": "k", "ts": 1, "features": [1, 1e39]}, Reason.NON_FINITE),
        ({"key": "k", "ts": 1, "features": [1, 2], "target": [1, 2]}, Reason.BAD_TARGET),
        ({"key": "k", "ts": 1, "features": [1, 2], "target": 5}, Reason.BAD_TARGET),
        ({"key": "k", "ts": 1, "features": [1, 2], "reset": "yes"}, Reason.BAD_RESET),
    ],
)
def test_bad_fields_are_rejected_with_reason(payload, reason):
    message_key = None if "missing" in reason else b"kafka-key"
    result = _decode(payload, message_key=message_key)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.detail


def test_deeply_nested_json_is_rejected_not_raised():
    value = b"[" * 100_000 + b"]" * 100_000
    result = decode_event(value, b"k", 2, 1, max_bytes=10_000_000)
    assert isinstance(result, Rejection)
    assert result.reason in (Reason.INVALID_JSON, Reason.NOT_OBJECT)


def test_parse_ts_accepts_numbers_and_rfc3339_with_offset():
    assert parse_ts(5) == 5.0
    assert parse_ts("1970-01-01T01:00:00+01:00") == 0.0
    with pytest.raises(ValueError):
        parse_ts(float("nan"))


def test_parse_ts_accepts_rfc3339_lower_case_t_and_z():
    assert parse_ts("1970-01-01t00:00:10z") == 10.0


@pytest.mark.parametrize("value", ["1970-01-02T00:00:00", "1970-01-02", True, "1700000000", None])
def test_parse_ts_refuses_naive_times_booleans_and_numeric_strings(value):
    with pytest.raises(ValueError):
        parse_ts(value)


def test_parse_ts_takes_naive_times_in_the_zone_given():
    assert parse_ts("1970-01-02", naive_tz=UTC) == 86_400.0
    assert parse_ts("1970-01-02T01:00:00", naive_tz=timezone(timedelta(hours=1))) == 86_400.0
    # An explicit offset wins over the zone given for naive times.
    assert parse_ts("1970-01-02T00:00:00Z", naive_tz=timezone(timedelta(hours=5))) == 86_400.0


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.text(),
        st.from_regex(r"[0-9tTzZ:+\-. ]{0,40}", fullmatch=True),
        st.integers(),
        st.floats(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
    naive_utc=st.booleans(),
)
def test_parse_ts_returns_a_finite_time_or_raises_value_error(value, naive_utc):
    try:
        ts = parse_ts(value, naive_tz=UTC if naive_utc else None)
    except ValueError:
        return
    assert math.isfinite(ts)


BIG = "1" + "0" * 400  # a 401-digit JSON integer: no float can hold it


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # Each of these raised (or was accepted and later failed) before issue 11.
        ('{"key": "k", "ts": BIG, "features": [1, 2]}'.replace("BIG", BIG), Reason.BAD_TS),
        ('{"key": "k", "ts": -BIG, "features": [1, 2]}'.replace("BIG", BIG), Reason.BAD_TS),
        ('{"key": "k", "ts": 1, "features": [1, BIG]}'.replace("BIG", BIG), Reason.NON_FINITE),
        (
            '{"key": "k", "ts": 1, "features": [1, 2], "target": [BIG]}'.replace("BIG", BIG),
            Reason.NON_FINITE,
        ),
        (
            '{"key": "k", "ts": 1, "features": [1, 2], "reset": BIG}'.replace("BIG", BIG),
            Reason.BAD_RESET,
        ),
        ('{"key": "\\ud800", "ts": 1, "features": [1, 2]}', Reason.BAD_KEY),
        ('{"key": "a\\udfffb", "ts": 1, "features": [1, 2]}', Reason.BAD_KEY),
    ],
)
def test_hostile_numbers_and_strings_become_rejections(value, reason):
    result = decode_event(value.encode(), b"k", 2, 1)
    assert isinstance(result, Rejection), result
    assert result.reason == reason


@pytest.mark.parametrize(
    "value",
    [
        b"\xef\xbb\xbf" + b'{"key": "k", "ts": 1, "features": [1, 2]}',
        '{"key": "k", "ts": 1, "features": [1, 2]}'.encode("utf-16"),
        '{"key": "k", "ts": 1, "features": [1, 2]}'.encode("utf-16-le"),
        '{"key": "k", "ts": 1, "features": [1, 2]}'.encode("utf-32"),
    ],
)
def test_events_are_utf8_json_without_bom(value):
    result = decode_event(value, b"k", 2, 1)
    assert isinstance(result, Rejection)
    assert result.reason == Reason.INVALID_JSON


def test_a_key_over_max_key_bytes_is_rejected_from_the_field_or_the_message_key():
    at_limit = _decode({"key": "é" * 128, "ts": 1, "features": [1, 2]})  # 256 UTF-8 bytes
    assert isinstance(at_limit, Event)
    over = _decode({"key": "é" * 128 + "x", "ts": 1, "features": [1, 2]})
    assert isinstance(over, Rejection) and over.reason == Reason.KEY_TOO_LARGE
    assert "stream.max_key_bytes" in over.detail
    value = json.dumps({"ts": 1, "features": [1, 2]}).encode()
    from_message = decode_event(value, b"m" * 11, 2, 1, max_key_bytes=10)
    assert isinstance(from_message, Rejection) and from_message.reason == Reason.KEY_TOO_LARGE


def test_a_field_given_twice_takes_its_last_value():
    result = _decode(b'{"key": "a", "key": "b", "ts": 1, "features": [1, 2]}')
    assert isinstance(result, Event) and result.key == "b"


def test_every_accepted_key_encodes_as_utf8():
    result = _decode(b'{"key": "\\ud83d\\udd11", "ts": 1, "features": [1, 2]}')  # a valid pair
    assert isinstance(result, Event) and result.key.encode("utf-8") == "🔑".encode()


def _same(a, b):
    if isinstance(a, Rejection) or isinstance(b, Rejection):
        return a == b
    return (
        a.key == b.key
        and a.ts == b.ts
        and a.reset == b.reset
        and np.array_equal(a.features, b.features)
        and (a.target is None) == (b.target is None)
        and (a.target is None or np.array_equal(a.target, b.target))
    )


def test_a_bound_decoder_answers_as_decode_event_while_its_latest_ts_moves():
    decoder = EventDecoder(2, 1, max_bytes=200, max_key_bytes=8)
    values = [
        b'{"key": "k", "ts": 100.5, "features": [1, 2]}',
        b'{"key": "k", "ts": 100, "features": [1, 2.5], "target": [3]}',
        b'{"ts": "2024-01-01T00:00:00Z", "features": [1, 2], "reset": true}',
        b'{"key": "k", "ts": 1e400, "features": [1, 2]}',
        b'{"key": "k", "ts": NaN, "features": [1, 2]}',
        b'{"key": "k", "ts": true, "features": [1, 2]}',
        b'{"key": "toolongkey", "ts": 1.5, "features": [1, 2]}',
        b'{"key": "k", "ts": 1.5, "features": [1]}',
        b"[1]",
        b"",
        b'{"key": "k", "ts": 1.5, "features": [1, 2], "pad": "' + b"x" * 200 + b'"}',
    ]
    # 50 makes the ts-100 events future_ts; 1.7e9 only the 2024-01-01 one (1.704e9).
    for latest in (math.inf, 50.0, 1.7e9, math.inf):
        decoder.latest_ts = latest
        for value in values:
            expected = decode_event(value, b"mk", 2, 1, 200, latest, 8)
            assert _same(decoder.decode(value, b"mk"), expected), (latest, value)
    decoder.latest_ts = 50.0
    late = decoder.decode(values[0], None)
    assert isinstance(late, Rejection) and late.reason == Reason.FUTURE_TS
    decoder.latest_ts = 200.0
    assert isinstance(decoder.decode(values[0], None), Event)
