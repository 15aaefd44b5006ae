"""What the practical anchors share: their output, refit schedules and the per-key layout.

An anchor is a model a data scientist would deploy instead of lstmd and refit on a schedule
(`autoets.py`: statsforecast's AutoETS per key; `global_gbm.py`: one LightGBM over all keys).
Each is run strictly prequentially over a decoded `Stream`: the forecast for event *t* (of the
key's next value) is made from values up to *t* and from a model fitted only on values known
before *t* arrived. Unlike the online baselines (`baselines.py`) they compute every forecast
of a refit period at once, which is what makes refitting affordable; the leakage tests
(tests/unit/evaluation/test_anchors.py) hold them to the same rule by changing the future and
checking that no earlier forecast moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from daemon.evaluation.stream import Stream

# Interval levels every anchor and lstmd are scored at (lstmd's default `intervals.levels`).
DEFAULT_LEVELS = (0.8, 0.95)
# Refits per key (AutoETS) or over the stream (LightGBM) are capped near this many by refitting
# every whole number of seasons: refitting Birthdays' 51 keys every week would take AutoETS
# ~53,000 fits (~50 min here); every 18 weeks, 2,900 fits.
TARGET_REFITS = 60


@dataclass
class AnchorRun:
    """An anchor's forecasts over a stream and what they cost.

    Attributes:
        forecasts: [events, 1]: per event, its forecast of the key's next value (NaN: none).
        lower, upper: Per interval level, [events] bounds of that forecast (absent: no
            interval of the model's own).
        seconds: Wall time of the whole prequential pass, refits included.
        fit_seconds: Wall time spent fitting.
        refits: Fits run.
        description: The configuration in full.
    """

    forecasts: np.ndarray
    seconds: float
    fit_seconds: float
    refits: int
    description: str
    lower: dict[float, np.ndarray] = field(default_factory=dict)
    upper: dict[float, np.ndarray] = field(default_factory=dict)


def refit_every(season: int, longest: int, target: int = TARGET_REFITS) -> int:
    """Return R, the refit period in events: whole seasons, about `target` refits over `longest`.

    >>> refit_every(12, 144)
    12
    >>> refit_every(7, 7305)
    126
    """
    seasons = max(1, math.ceil(longest / (season * target)))
    return season * seasons


def key_positions(keys: list[str]) -> dict[str, np.ndarray]:
    """Return each key's event indices in stream order."""
    out: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        out.setdefault(key, []).append(index)
    return {key: np.asarray(indices, np.int64) for key, indices in out.items()}


def seasonal_naive_fill(forecasts: np.ndarray, stream: Stream, season: int) -> None:
    """Give every event still without a forecast the seasonal naive one.

    The forecast of a key's next value is its value one season before that, or its last value
    while it has fewer than `season` values (as `baselines.SeasonalNaive`).
    """
    for indices in key_positions(stream.keys).values():
        missing = np.isnan(forecasts[indices, 0])
        if not missing.any():
            continue
        y = stream.values[indices]
        fill = y.copy()  # last value
        fill[season - 1 :] = y[: len(y) - season + 1]  # the next value's, one season before
        forecasts[indices[missing], 0] = fill[missing]


def cadence_s(stream: Stream) -> float:
    """Return the median gap between a key's consecutive distinct event times, in seconds."""
    gaps = [np.diff(np.asarray(t, np.float64)) for t in stream.times_by_key().values()]
    joined = np.concatenate(gaps) if gaps else np.zeros(0)
    joined = joined[joined > 0]
    return float(np.median(joined)) if joined.size else 1.0
