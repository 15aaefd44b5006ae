"""Event decoding and validation: bytes in, an `Event` or a `Rejection` out.

Pure: imports neither kafka nor tensorflow. Every way an event can be bad has a `Reason`, and the
reason travels to the dead-letter topic and to the rejected-events counter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import orjson

# Largest finite float32; a feature above it would become inf inside the model.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = (int, float)


class Reason(StrEnum):
    """Why an event was dead-lettered."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    NOT_OBJECT = "not_object"
    MISSING_KEY = "missing_key"
    BAD_TS = "bad_ts"
    BAD_FEATURES = "bad_features"
    BAD_TARGET = "bad_target"
    NON_FINITE = "non_finite"
    BAD_RESET = "bad_reset"
    FUTURE_TS = "future_ts"
    OUT_OF_ORDER = "out_of_order"
    BAD_KEY = "bad_key"
    KEY_TOO_LARGE = "key_too_large"
    # Not the event's fault: the daemon failed while handling it (see README, Failure behaviour).
    INTERNAL_ERROR = "internal_error"
    # The event was fine, but its prediction cannot be published (larger than a Kafka request).
    PREDICTION_TOO_LARGE = "prediction_too_large"


class Event(NamedTuple):
    """One valid input event.

    A NamedTuple, not a frozen dataclass: one is built per event, and a tuple is built several
    times faster than a frozen dataclass sets its fields.
    """

    key: str
    ts: float
    features: np.ndarray  # float64 [n_features]
    target: np.ndarray | None  # float64 [n_targets]; None → forecast mode
    reset: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input could not become an `Event`."""

    reason: Reason
    detail: str


class _Reject(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reject_constant(token: str) -> float:
    # json accepts NaN/Infinity literals by default; they are never valid input.
    raise _Reject(Reason.NON_FINITE, f"non-finite literal {token}")


def parse_ts(value: object, naive_tz: tzinfo | None = None) -> float:
    """Return event time as epoch seconds from a number or an RFC 3339 string.

    The one parser of event times: the daemon's decoder and CSV replay both use it. RFC 3339's
    lower-case "t" and "z" are accepted. It raises only ValueError, whatever it is given.

    Args:
        value: A JSON number (not a boolean), or a time string.
        naive_tz: The zone of a string without an offset (a date alone means its midnight);
            None (the daemon's rule) refuses such a string, as RFC 3339 requires the offset.

    Raises:
        ValueError: the value is neither, lacks an offset, or is not finite.
    """
    if type(value) is float:  # the common case: a JSON number with a fraction or exponent
        if value - value != 0.0:  # inf - inf and nan - nan are nan
            raise ValueError("ts is not finite")
        return value
    if isinstance(value, bool):
        raise ValueError("ts must be a number or an RFC 3339 string, not a boolean")
    if isinstance(value, int | float):
        try:
            ts = float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            raise ValueError("ts is too large to be a time") from None
    elif isinstance(value, str):
        ts = _parse_time_string(value, naive_tz)
    else:
        raise ValueError(f"ts must be a number or an RFC 3339 string, not {type(value).__name__}")
    if not math.isfinite(ts):
        raise ValueError("ts is not finite")
    return ts


def _parse_time_string(value: str, naive_tz: tzinfo | None) -> float:
    try:
        # fromisoformat wants the upper-case "T" and "Z" that RFC 3339 only recommends.
        parsed = datetime.fromisoformat(value.strip().upper())
    except ValueError:
        raise ValueError(f"ts {value[:40]!r} is not RFC 3339") from None
    if parsed.tzinfo is None:
        if naive_tz is None:
            raise ValueError(f"ts {value[:40]!r} has no time zone offset")
        parsed = parsed.replace(tzinfo=naive_tz)
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):  # year 1 or 9999 pushed past the range by its offset
        raise ValueError(f"ts {value[:40]!r} is out of range") from None


def _vector(value: object, size: int, field: str, shape_reason: Reason) -> np.ndarray:
    if not isinstance(value, list):
        raise _Reject(shape_reason, f"{field} must be a list of {size} numbers")
    if len(value) != size:
        raise _Reject(shape_reason, f"{field} has {len(value)} values, expected {size}")
    # One plain-Python pass: for a dozen values it is several times cheaper than numpy's checks.
    # A plain float or int inside float32's range is the common case and costs two checks; any
    # other value goes through `_number`, which names what is wrong with it.
    for item in value:
        kind = type(item)
        if (kind is not float and kind is not int) or not -_FLOAT32_MAX <= item <= _FLOAT32_MAX:
            _number(item, field, shape_reason)
    return np.array(value, dtype=np.float64)


def _number(item: object, field: str, shape_reason: Reason) -> None:
    """Check one vector item that is not a plain in-range float; raise `_Reject` if it is bad."""
    if isinstance(item, bool) or not isinstance(item, _NUMBER_TYPES):
        raise _Reject(shape_reason, f"{field} holds a non-number {str(item)[:40]!r}")
    try:
        number = float(item)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _Reject(Reason.NON_FINITE, f"{field} holds a non-finite number")
    if abs(number) > _FLOAT32_MAX:
        raise _Reject(Reason.NON_FINITE, f"{field} holds a number that overflows float32")


def _key(payload: dict, message_key: bytes | None, max_key_bytes: int) -> str:
    key = payload.get("key")
    if key is not None and not isinstance(key, str):
        raise _Reject(Reason.MISSING_KEY, f"key must be a string, not {type(key).__name__}")
    if key:
        try:
            # JSON may spell lone surrogates ("\ud800"); such a key could never be published.
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise _Reject(Reason.BAD_KEY, "key holds a lone surrogate, not valid Unicode") from None
    elif message_key:
        size = len(message_key)
        try:
            key = message_key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(Reason.MISSING_KEY, "Kafka message key is not UTF-8") from None
    else:
        raise _Reject(Reason.MISSING_KEY, "no key field and no Kafka message key")
    if size > max_key_bytes:
        raise _Reject(
            Reason.KEY_TOO_LARGE,
            f"key of {size} bytes exceeds stream.max_key_bytes={max_key_bytes}",
        )
    return key


class _Limits(NamedTuple):
    n_features: int
    n_targets: int
    latest_ts: float
    max_key_bytes: int


def _parse(value: bytes, message_key: bytes | None, limits: _Limits) -> Event:
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError:
        payload = _strict_loads(value)
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise _Reject(Reason.NOT_OBJECT, f"event must be a JSON object, not {kind}")
    return _fields(payload, message_key, limits)


def _strict_loads(value: bytes) -> Any:
    """Parse what orjson refused with the standard library, to name the exact problem.

    The bytes are decoded as UTF-8 first: `json.loads(bytes)` would guess UTF-16 or UTF-32 from
    the first bytes and accept them, and events are UTF-8 JSON (a UTF-8 BOM is refused too).
    """
    try:
        return json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise _Reject(Reason.INVALID_JSON, f"not UTF-8: {exc}"[:200]) from None
    except json.JSONDecodeError as exc:
        raise _Reject(Reason.INVALID_JSON, str(exc)[:200]) from None
    except RecursionError:
        raise _Reject(Reason.INVALID_JSON, "JSON nested too deeply") from None


def _fields(payload: dict, message_key: bytes | None, limits: _Limits) -> Event:
    key = _key(payload, message_key, limits.max_key_bytes)
    if "ts" not in payload:
        raise _Reject(Reason.BAD_TS, "no ts field")
    try:
        ts = parse_ts(payload["ts"])
    except ValueError as exc:
        raise _Reject(Reason.BAD_TS, str(exc)) from None
    if ts > limits.latest_ts:
        # Accepted, it would make every later event of its key look "out of order".
        raise _Reject(Reason.FUTURE_TS, f"ts {ts} is after the latest accepted {limits.latest_ts}")
    features = _vector(payload.get("features"), limits.n_features, "features", Reason.BAD_FEATURES)
    raw_target = payload.get("target")
    target = None
    if raw_target is not None:
        target = _vector(raw_target, limits.n_targets, "target", Reason.BAD_TARGET)
    reset = payload.get("reset", False)
    if not isinstance(reset, bool):
        raise _Reject(Reason.BAD_RESET, "reset must be true or false")
    return Event(key, ts, features, target, reset)


def decode_event(
    value: bytes | None,
    message_key: bytes | None,
    n_features: int,
    n_targets: int,
    max_bytes: int = 1_048_576,
    latest_ts: float = math.inf,
    max_key_bytes: int = 256,
) -> Event | Rejection:
    """Decode one Kafka message value into an `Event`, or say why it is not one.

    Args:
        value: the message value (UTF-8 JSON).
        message_key: the Kafka message key, used when the event has no `key` field.
        n_features: the exact length `features` must have.
        n_targets: the exact length `target` must have when present.
        max_bytes: values longer than this are rejected before parsing.
        latest_ts: events stamped later than this (epoch seconds) are rejected.
        max_key_bytes: keys longer than this in UTF-8 are rejected (`key_too_large`).

    Returns:
        The event, or a `Rejection` naming the reason. Never raises on bad input. A field named
        twice in one object takes its last value, as orjson, `json` and JavaScript all do.
    """
    decoder = EventDecoder(n_features, n_targets, max_bytes, max_key_bytes)
    decoder.latest_ts = latest_ts
    return decoder.decode(value, message_key)


class EventDecoder:
    """`decode_event` with its sizes and limits bound once, for a loop that decodes every event.

    Attributes:
        latest_ts: events stamped later than this (epoch seconds) are rejected; the loop moves
            it once per poll.
    """

    def __init__(
        self, n_features: int, n_targets: int, max_bytes: int = 1_048_576, max_key_bytes: int = 256
    ) -> None:
        self._max_bytes = max_bytes
        self._limits = _Limits(n_features, n_targets, math.inf, max_key_bytes)

    @property
    def latest_ts(self) -> float:
        return self._limits.latest_ts

    @latest_ts.setter
    def latest_ts(self, value: float) -> None:
        self._limits = self._limits._replace(latest_ts=value)

    def decode(self, value: bytes | None, message_key: bytes | None) -> Event | Rejection:
        """Return the event in `value`, or a `Rejection` saying why not (see `decode_event`)."""
        if not value:
            return Rejection(Reason.EMPTY, "message has no value")
        if len(value) > self._max_bytes:
            return Rejection(Reason.TOO_LARGE, f"{len(value)} bytes exceeds {self._max_bytes}")
        try:
            return _parse(value, message_key, self._limits)
        except _Reject as exc:
            return Rejection(exc.reason, exc.detail)
