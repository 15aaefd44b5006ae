"""Baselines and the prequential loop they share: predict, then learn, one event at a time.

Each baseline forecasts many keyed univariate series, one model state per key, and names itself
with its full configuration (`describe`), so a report says exactly what lstmd was compared with.
River comes with the `eval` extra and is imported only when SNARIMAX runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

# River's default SGD rate 0.01 diverges on counts in the thousands; 0.001 is stable on all four
# evaluation data sets and is the rate of the seasonal SNARIMAX score quoted in issue 14.
SNARIMAX_LEARNING_RATE = 0.001
# Orders. Non-seasonal: the (7,1,7) of earlier reports. Seasonal: (3,1,2)(1,0,1)m, which scored
# 0.0339 on elecdemand at m=48 (issue 14).
SNARIMAX_ORDER = (7, 1, 7)
SEASONAL_SNARIMAX_ORDER = (3, 1, 2)
SEASONAL_SNARIMAX_SEASONAL_ORDER = (1, 0, 1)
# A gradient clip keeps SGD from diverging after an outlier (nyc_weather: 5.9e9 -> 1.064 MAE),
# but slows it where there is none (Birthdays: 16.2 -> 20.8), so the report runs both.
SNARIMAX_CLIP_GRADIENT = 1.0


class Forecaster(Protocol):
    """A forecaster of many keyed univariate series, learning online."""

    def forecast(self, key: str, horizon: int) -> np.ndarray:
        """Forecast the key's next `horizon` values (it has learnt one value at least)."""
        ...

    def learn_one(self, key: str, value: float) -> None:
        """Learn the key's newest value."""
        ...

    def describe(self) -> str:
        """Name the model with its full configuration."""
        ...


def prequential_forecasts(
    model: Forecaster, keys: Sequence[str], values: np.ndarray, horizon: int = 1
) -> np.ndarray:
    """Run a forecaster prequentially; return per event the forecasts made for it.

    For each event: if its key has a previous event *t*, the model forecasts this value (and
    the `horizon - 1` after it) before it sees it, stored as the forecast for *t*; then the model
    learns the value. A key's last event gets no forecast (NaN): nothing follows to score it.

    Args:
        model: The forecaster.
        keys: Per event, its key.
        values: Per event, its target value.
        horizon: Values forecast each time.

    Returns:
        [events, horizon]; column h-1 is the forecast h steps ahead.
    """
    forecasts = np.full((len(keys), horizon), np.nan)
    last: dict[str, int] = {}
    for index, key in enumerate(keys):
        previous = last.get(key)
        if previous is not None:
            forecasts[previous] = model.forecast(key, horizon)
        model.learn_one(key, float(values[index]))
        last[key] = index
    return forecasts


class NaiveLast:
    """Forecast every step ahead as the key's last value."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def forecast(self, key: str, horizon: int) -> np.ndarray:
        return np.full(horizon, self._last[key])

    def learn_one(self, key: str, value: float) -> None:
        self._last[key] = value

    def describe(self) -> str:
        return "naive (last value)"


class SeasonalNaive:
    """Forecast a key's value h steps ahead as its value one season (or whole seasons) before.

    Until a key has that much history, the last value stands in (only the first forecasts of
    each key).
    """

    def __init__(self, season: int) -> None:
        if season < 1:
            raise ValueError(f"season must be >= 1, got {season}")
        self.season = season
        self._history: dict[str, list[float]] = {}

    def forecast(self, key: str, horizon: int) -> np.ndarray:
        history, m = self._history[key], self.season
        out = np.empty(horizon)
        for h in range(1, horizon + 1):
            back = -(-h // m) * m - h  # whole seasons before step h, counted from the last value
            out[h - 1] = history[-1 - back] if len(history) > back else history[-1]
        return out

    def learn_one(self, key: str, value: float) -> None:
        history = self._history.setdefault(key, [])
        history.append(value)
        if len(history) > self.season:
            del history[0]

    def describe(self) -> str:
        return f"seasonal naive (m={self.season})"


class RiverSnarimax:
    """River's SNARIMAX, one model per key, on the target value alone.

    The regressor is River's default (standard scaling, then linear regression) with plain SGD
    at `learning_rate`, its gradient optionally clipped to `clip_gradient` per component.
    """

    def __init__(
        self,
        p: int = SNARIMAX_ORDER[0],
        d: int = SNARIMAX_ORDER[1],
        q: int = SNARIMAX_ORDER[2],
        m: int = 1,
        sp: int = 0,
        sd: int = 0,
        sq: int = 0,
        learning_rate: float = SNARIMAX_LEARNING_RATE,
        clip_gradient: float | None = None,
    ) -> None:
        from river import time_series  # the `eval` extra

        self._time_series = time_series
        self.order = {"p": p, "d": d, "q": q, "m": m, "sp": sp, "sd": sd, "sq": sq}
        self.learning_rate = learning_rate
        self.clip_gradient = clip_gradient
        self._models: dict[str, Any] = {}

    @classmethod
    def seasonal(
        cls,
        m: int,
        learning_rate: float = SNARIMAX_LEARNING_RATE,
        clip_gradient: float | None = None,
    ) -> RiverSnarimax:
        """Return the seasonal SNARIMAX(3,1,2)(1,0,1)m."""
        p, d, q = SEASONAL_SNARIMAX_ORDER
        sp, sd, sq = SEASONAL_SNARIMAX_SEASONAL_ORDER
        return cls(p, d, q, m, sp, sd, sq, learning_rate, clip_gradient)

    def _new(self) -> Any:
        from river import linear_model, optim, preprocessing

        optimizer = optim.SGD(self.learning_rate)
        linear = (
            linear_model.LinearRegression(optimizer=optimizer)
            if self.clip_gradient is None
            else linear_model.LinearRegression(
                optimizer=optimizer, clip_gradient=self.clip_gradient
            )
        )
        regressor = preprocessing.StandardScaler() | linear
        return self._time_series.SNARIMAX(**self.order, regressor=regressor)

    def forecast(self, key: str, horizon: int) -> np.ndarray:
        return np.asarray(self._models[key].forecast(horizon=horizon), dtype=np.float64)

    def learn_one(self, key: str, value: float) -> None:
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = self._new()
        model.learn_one(value)

    def describe(self) -> str:
        o = self.order
        seasonal = (
            f"({o['sp']},{o['sd']},{o['sq']}){o['m']}" if o["sp"] or o["sd"] or o["sq"] else ""
        )
        clip = "" if self.clip_gradient is None else f", clip_gradient {self.clip_gradient:g}"
        return (
            f"River SNARIMAX({o['p']},{o['d']},{o['q']}){seasonal}, StandardScaler | "
            f"LinearRegression(SGD {self.learning_rate:g}{clip}), one per key"
        )


BASELINES = (
    "naive",
    "seasonal_naive",
    "snarimax",
    "snarimax_seasonal",
    "snarimax_seasonal_clipped",
)


def make_baseline(name: str, season: int, learning_rate: float) -> Forecaster:
    """Build the baseline called `name` (one of BASELINES) for a data set with season `season`.

    Raises:
        ValueError: Unknown name.
    """
    if name == "naive":
        return NaiveLast()
    if name == "seasonal_naive":
        return SeasonalNaive(season)
    if name == "snarimax":
        return RiverSnarimax(learning_rate=learning_rate)
    if name == "snarimax_seasonal":
        return RiverSnarimax.seasonal(season, learning_rate)
    if name == "snarimax_seasonal_clipped":
        return RiverSnarimax.seasonal(season, learning_rate, SNARIMAX_CLIP_GRADIENT)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
