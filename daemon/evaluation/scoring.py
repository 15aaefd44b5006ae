"""Scoring: which (forecast, truth) pairs count, and their errors. Pure numpy.

Every model is scored on exactly the same pairs: for each event *t* of a key that has an event
*h* steps later, the forecast for step *h* made for *t* (after *t*, before *t+1*) against the
value of the key's event *t+h*. Step 1 is the headline; steps 2..H exist when the lstmd run
forecasts a horizon H > 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def next_index(keys: Sequence[str], steps: int = 1) -> np.ndarray:
    """Return, per event, the index of the same key's event `steps` later, or -1 when none.

    Args:
        keys: The key of each event, in stream order.
        steps: How many of the key's events ahead (1: its next event).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    following = np.full(len(keys), -1, dtype=np.int64)
    by_key: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    for indices in by_key.values():
        if len(indices) > steps:
            following[indices[:-steps]] = indices[steps:]
    return following


@dataclass(frozen=True)
class Pairs:
    """The scored events: forecast made for event `source[i]` against the value at `target[i]`.

    Attributes:
        source: Index of event *t*, whose forecast is scored.
        target: Index of event *t+h*, the same key's event h steps later, whose value is truth.
        steps: h.
    """

    source: np.ndarray
    target: np.ndarray
    steps: int = 1


def scored_pairs(keys: Sequence[str], steps: int = 1) -> Pairs:
    """Return every (t, t+h) pair of one key's events, ordered by t+h.

    Ordering by the truth's position makes the error series run in stream time, as a live
    prequential score would accumulate.
    """
    following = next_index(keys, steps)
    source = np.flatnonzero(following >= 0)
    target = following[source]
    order = np.argsort(target, kind="stable")
    return Pairs(source=source[order], target=target[order], steps=steps)


@dataclass(frozen=True)
class Errors:
    """MAE and RMSE over a set of scored pairs."""

    mae: float
    rmse: float
    count: int


def error_summary(errors: np.ndarray) -> Errors:
    """Return MAE and RMSE of signed errors (NaN for none)."""
    if errors.size == 0:
        return Errors(math.nan, math.nan, 0)
    return Errors(
        mae=float(np.mean(np.abs(errors))),
        rmse=float(np.sqrt(np.mean(np.square(errors)))),
        count=int(errors.size),
    )


def pair_errors(forecasts: np.ndarray, truth: np.ndarray, pairs: Pairs) -> np.ndarray:
    """Return forecast minus truth on every pair.

    Args:
        forecasts: Per event, the forecast made for it: [events] (one step) or [events, H]
            (column h-1 is the forecast h steps ahead); NaN where none.
        truth: Per event, its target value.
        pairs: The scored pairs; their `steps` picks the column.

    Raises:
        ValueError: A scored event has no forecast: every model must be scored on the same
            pairs, so a missing one is a bug, not something to skip.
    """
    column = forecasts if forecasts.ndim == 1 else forecasts[:, pairs.steps - 1]
    predicted = column[pairs.source]
    missing = np.flatnonzero(~np.isfinite(predicted))
    if missing.size:
        raise ValueError(
            f"{missing.size} scored events have no {pairs.steps}-step forecast, first at event "
            f"{pairs.source[missing[0]]}"
        )
    return predicted - truth[pairs.target]


def per_key_errors(errors: np.ndarray, keys: Sequence[str], pairs: Pairs) -> dict[str, Errors]:
    """Group pair errors by key (the key of the truth event), keys sorted."""
    pair_keys = np.asarray(keys, dtype=object)[pairs.target]
    return {key: error_summary(errors[pair_keys == key]) for key in sorted(set(pair_keys.tolist()))}


def rolling_mae(errors: np.ndarray, window: int) -> np.ndarray:
    """Return the trailing mean of |error| over `window` pairs (shorter at the start)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    cumulative = np.concatenate([[0.0], np.cumsum(np.abs(errors))])
    ends = np.arange(1, errors.size + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)
