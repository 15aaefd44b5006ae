"""The lstmd run: messages through the daemon's real learning path, without Kafka.

The loop is the runner's: decode, `OnlineLearner.ingest`, `end_of_poll` after every
`poll_events` messages, `drain` at the end, and the published predictions collected from
`take_outbox`. The forecast for event *t* is the prediction published for *t*.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daemon.core.events import EventDecoder, Rejection
from daemon.core.learner import OnlineLearner
from daemon.settings import Settings

DEFAULT_POLL_EVENTS = 500


def horizon_of(settings: Settings) -> int:
    """Return the model's forecast horizon H (`model.horizon`)."""
    return settings.model.horizon


def eval_settings(settings: Settings, n_features: int, target_index: tuple[int, ...]) -> Settings:
    """Fit the model shape to the data and close batches by size only (deterministic)."""
    model = settings.model.model_copy(
        update={
            "n_features": n_features,
            "n_targets": len(target_index),
            "target_index": target_index,
        }
    )
    stream = settings.stream.model_copy(update={"max_batch_wait_ms": 0})
    return settings.model_copy(update={"model": model, "stream": stream})


def first_target_steps(prediction: np.ndarray, n_targets: int, horizon: int) -> np.ndarray:
    """Return the H forecasts of the first target from one published prediction.

    Args:
        prediction: [n_targets] (H = 1) or [n_targets, H] (one list of H values per target, as
            the prediction message carries them).
        n_targets: Targets per event.
        horizon: H.

    Raises:
        ValueError: The prediction has neither shape.
    """
    values = np.asarray(prediction, dtype=np.float64)
    if values.shape == (n_targets,) and horizon == 1:
        return values[:1]
    if values.shape == (n_targets, horizon):
        return values[0]
    raise ValueError(
        f"prediction shape {values.shape} is neither [{n_targets}] nor [{n_targets}, {horizon}]"
    )


@dataclass
class LstmdRun:
    """What one lstmd pass over a data set produced.

    Attributes:
        forecasts: [events, H]: per event, the forecasts published for it (NaN where none).
        seconds: Wall time of the loop (decode, ingest, steps, drain); model build excluded.
        build_seconds: Building the model.
        rejected: Messages the decoder or the learner refused (clean data: 0).
        facts: What the learner reports about itself (steps, resets, its own prequential MAE).
        lower, upper: Per interval level, [events, H]: the published bounds of the first
            target (NaN where none).
    """

    forecasts: np.ndarray
    seconds: float
    build_seconds: float
    rejected: int
    facts: dict[str, Any] = field(default_factory=dict)
    lower: dict[float, np.ndarray] = field(default_factory=dict)
    upper: dict[float, np.ndarray] = field(default_factory=dict)


def _learner_facts(learner: OnlineLearner) -> dict[str, Any]:
    """Collect what the learner reports about itself."""
    return {
        "train_steps": learner.step,
        "untrained": learner.untrained,
        "resets": dict(learner.resets),
        "inference_calls": learner.infer_calls,
        "inference_batches_in_steps": learner.infer_in_steps,
        "keys_per_step": round(learner.mean_rows_filled(), 2),
        "learner_mae": learner.prequential.model_mae,  # a cross-check of the scoring
        "learner_naive_mae": learner.prequential.naive_mae,
        # Per step ahead h = 1..H, over the events with all H successors (H > 1 differs from
        # the report's step h, which also scores events with only h successors).
        "learner_mae_per_step": learner.prequential.step_maes(),
        # The learner's own scores of its published intervals (a cross-check of the report's).
        "learner_interval_coverage": learner.interval_scores.coverage(),
        "learner_interval_score": learner.interval_scores.interval_score(),
    }


def lstmd_forecasts(
    settings: Settings,
    messages: Sequence[tuple[bytes | None, bytes]],
    poll_events: int = DEFAULT_POLL_EVENTS,
    model_factory: Callable[[Settings], Any] | None = None,
) -> LstmdRun:
    """Run messages through the daemon's learning path; return per event its forecasts.

    Args:
        settings: Complete settings (see `eval_settings`).
        messages: (Kafka key, JSON value) pairs in stream order; message i has offset i.
        poll_events: Messages per simulated poll.
        model_factory: Builds the model from the settings; the real StatefulLSTM by default.
    """
    if model_factory is None:
        from daemon.model.environment import configure_tensorflow

        configure_tensorflow()
        from daemon.model.lstm import build_model

        def model_factory(s: Settings) -> Any:
            return build_model(s)

    built = time.perf_counter()
    learner = OnlineLearner(settings, model_factory(settings))
    build_seconds = time.perf_counter() - built
    m, stream = settings.model, settings.stream
    horizon = horizon_of(settings)
    forecasts = np.full((len(messages), horizon), np.nan)
    levels = settings.intervals.levels
    lower = {level: np.full((len(messages), horizon), np.nan) for level in levels}
    upper = {level: np.full((len(messages), horizon), np.nan) for level in levels}
    rejected = 0

    def collect() -> None:
        for prediction in learner.take_outbox():
            offset = prediction.offset
            forecasts[offset] = first_target_steps(prediction.prediction, m.n_targets, horizon)
            if prediction.intervals is None:
                continue
            for level, (low, high) in zip(levels, prediction.intervals, strict=True):
                lower[level][offset] = first_target_steps(low, m.n_targets, horizon)
                upper[level][offset] = first_target_steps(high, m.n_targets, horizon)

    decoder = EventDecoder(m.n_features, m.n_targets, stream.max_event_bytes)
    started = time.perf_counter()
    for offset, (key, value) in enumerate(messages):
        event = decoder.decode(value, key)
        if isinstance(event, Rejection) or learner.ingest(event, 0, offset) is not None:
            rejected += 1
        if offset % poll_events == poll_events - 1:
            learner.end_of_poll()
            collect()
    learner.drain()
    collect()
    seconds = time.perf_counter() - started
    facts = _learner_facts(learner)
    return LstmdRun(forecasts, seconds, build_seconds, rejected, facts, lower, upper)
