"""statsforecast's AutoETS per key, refit on a schedule: the statistician's anchor.

Per key: once it has `min_values` values, an AutoETS (error, trend, damping and season chosen by
AICc, statsforecast's defaults) is fitted on its last `window` values, and refitted every R of its
events. Between refits each one-step forecast comes from the fitted model run forward (its
parameters fixed, its states filtered through the values seen since) over exactly the values
before it: `AutoETS.forward(y[:t + 1])`, never a longer series. Before the first fit the
forecast is seasonal naive's. The model's own prediction intervals (normal errors, analytic
variance) come with each forecast.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from daemon.evaluation.anchors import (
    DEFAULT_LEVELS,
    AnchorRun,
    key_positions,
    refit_every,
    seasonal_naive_fill,
)
from daemon.evaluation.stream import Stream

# The window holds this many seasons (the configuration: refit every season on the
# last 20 seasons).
WINDOW_SEASONS = 20


class AutoEtsAnchor:
    """Run AutoETS per key over a stream, prequentially.

    Args:
        season: m.
        refit: R, events of a key between its refits; None picks whole seasons for about
            TARGET_REFITS refits of the longest key (`anchors.refit_every`).
        window: Values a fit sees (the key's latest); None: WINDOW_SEASONS seasons.
        min_values: Values a key needs before its first fit; None: two seasons, at least 10.
        levels: Interval levels to take from the model.
    """

    def __init__(
        self,
        season: int,
        refit: int | None = None,
        window: int | None = None,
        min_values: int | None = None,
        levels: tuple[float, ...] = DEFAULT_LEVELS,
    ) -> None:
        self.season = season
        self.refit = refit
        self.window = window or WINDOW_SEASONS * season
        self.min_values = min_values or max(10, 2 * season)
        self.levels = levels

    def describe(self, refit: int) -> str:
        """Name the configuration in full."""
        return (
            f"statsforecast AutoETS(season_length={self.season}, model ZZZ by AICc), one per key, "
            f"refit every {refit} events on its last {self.window} values, run forward between "
            f"refits; seasonal naive before {self.min_values} values"
        )

    def run(self, stream: Stream) -> AnchorRun:
        """Forecast every event's next value; return the forecasts, intervals and costs."""
        started = time.perf_counter()
        positions = key_positions(stream.keys)
        longest = max((len(p) for p in positions.values()), default=1)
        refit = self.refit or refit_every(self.season, longest)
        forecasts = np.full((len(stream.keys), 1), np.nan)
        lower = {level: np.full(len(stream.keys), np.nan) for level in self.levels}
        upper = {level: np.full(len(stream.keys), np.nan) for level in self.levels}
        fit_seconds, fits = 0.0, 0
        for indices in positions.values():
            y = stream.values[indices]
            spent, count = self._key(y, indices, refit, forecasts, lower, upper)
            fit_seconds += spent
            fits += count
        seasonal_naive_fill(forecasts, stream, self.season)
        return AnchorRun(
            forecasts,
            time.perf_counter() - started,
            fit_seconds,
            fits,
            self.describe(refit),
            lower,
            upper,
        )

    def _key(
        self,
        y: np.ndarray,
        indices: np.ndarray,
        refit: int,
        forecasts: np.ndarray,
        lower: dict[float, np.ndarray],
        upper: dict[float, np.ndarray],
    ) -> tuple[float, int]:
        """Forecast one key's values; return (seconds fitting, fits)."""
        from statsforecast.models import AutoETS  # the `eval` extra

        percents = [_percent(level) for level in self.levels]
        model, start, fit_seconds, fits = None, 0, 0.0, 0
        # `seen` values are known when the forecast for the value at `seen` is made; it is the
        # forecast published for event `seen - 1`.
        for seen in range(self.min_values, len(y)):
            if (seen - self.min_values) % refit == 0:
                began = time.perf_counter()
                first = max(0, seen - self.window)
                fitted = _fit(AutoETS(season_length=self.season), y[first:seen])
                fit_seconds += time.perf_counter() - began
                fits += 1
                if fitted is not None:  # otherwise the last model runs on
                    model, start = fitted, first
            if model is None:
                continue
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                out = model.forward(y[start:seen], h=1, level=percents)
            event = indices[seen - 1]
            forecasts[event, 0] = out["mean"][0]
            for level, percent in zip(self.levels, percents, strict=True):
                lower[level][event] = out[f"lo-{percent}"][0]
                upper[level][event] = out[f"hi-{percent}"][0]
        return fit_seconds, fits


def _fit(model: Any, values: np.ndarray) -> Any:
    """Fit AutoETS; None when statsforecast finds no model it can fit (a forecast falls back)."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return model.fit(values)
    except Exception:  # statsforecast raises bare Exception("no model able to be fitted")
        return None


def _percent(level: float) -> int | float:
    """Return a level as statsforecast names it: 0.8 -> 80, 0.975 -> 97.5."""
    percent = round(level * 100, 6)
    return int(percent) if percent.is_integer() else percent
