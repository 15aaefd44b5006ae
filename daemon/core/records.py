"""Output records: one prediction per input event, and the JSON of prediction and metrics-topic
messages. Pure."""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np
import orjson


class Prediction(NamedTuple):
    """One prediction to publish for one input event (a NamedTuple: one is built per event)."""

    key: str
    ts: float
    partition: int
    offset: int
    mode: str  # "forecast" or "supervised"
    # [n_targets]; with a horizon H > 1, [n_targets, H]: the next H values of each target.
    prediction: np.ndarray
    target: np.ndarray | None
    step: int
    received_at: float
    # Interval levels, and per level its (lower, upper) bounds shaped like `prediction`:
    # [levels, 2, n_targets] or [levels, 2, n_targets, H]. None: no intervals.
    levels: tuple[float, ...] = ()
    intervals: np.ndarray | None = None


def _floats(values: Any) -> list[float | None]:
    # JSON has no NaN: a non-finite prediction is published as null rather than invalid JSON.
    return [float(v) if math.isfinite(v) else None for v in values]


def _numbers(values: Any) -> Any:
    """Return what orjson writes as `_floats(values)` would be written, as cheaply as it can.

    [v, ...] per target (H = 1), or [[v_1, ..., v_H], ...] per target (H > 1). A contiguous
    float64 array goes to orjson as it is (OPT_SERIALIZE_NUMPY writes NaN and infinities as null
    too, with the same shortest repr as a Python float); anything else is converted first.
    """
    if type(values) is np.ndarray and values.dtype == np.float64 and values.flags.c_contiguous:
        return values
    if getattr(values, "ndim", 1) == 2:
        return [_floats(row) for row in values]
    return _floats(values)


def encode_prediction(prediction: Prediction, topic: str) -> bytes:
    """Serialise one prediction as the predictions topic's JSON (DESIGN §7)."""
    record = {
        "key": prediction.key,
        "ts": prediction.ts,
        "source_topic": topic,
        "source_partition": prediction.partition,
        "source_offset": prediction.offset,
        "mode": prediction.mode,
        "prediction": _numbers(prediction.prediction),
        "target": None if prediction.target is None else _numbers(prediction.target),
        "model_step": prediction.step,
    }
    if prediction.intervals is not None:
        record["intervals"] = [
            {"level": level, "lower": _numbers(bounds[0]), "upper": _numbers(bounds[1])}
            for level, bounds in zip(prediction.levels, prediction.intervals, strict=True)
        ]
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_metrics(fields: dict[str, Any]) -> bytes:
    """Serialise one metrics-topic message; non-finite numbers become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(fields), separators=(",", ":")).encode()
