"""Forecast quality: lstmd against baselines, prequential, on the same scored events.

Every model sees the events of a data set in the same order and forecasts each key's next target
value one step ahead before it learns from that value (prequential: predict, score, then learn).
All models are scored on exactly the same pairs: for each event *t* of a key that has a next
event *t+1*, the forecast made for *t* (after *t*, before *t+1*) against *t+1*'s
`features[target_index]`. For lstmd the forecast for *t* is the prediction it publishes for
event *t*, produced by the real learning path (`decode_event` → `OnlineLearner.ingest` →
`end_of_poll` every `poll_events` events → `drain`), without Kafka.

The scoring functions are pure (numpy only); `run_evaluation` wires data, models, report and
plots. TensorFlow is imported only when lstmd runs; River (SNARIMAX) and matplotlib come with the
`eval` extra and are imported only when used.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from daemon.core.events import Event, Rejection, decode_event
from daemon.evaluation.datasets import EvalDataset, load_eval_dataset
from daemon.model.environment import configure_tensorflow
from daemon.settings import Settings

DEFAULT_POLL_EVENTS = 500
# Rolling window of the error-over-time plot, in scored pairs (Birthdays: ~100 days x 51 states).
DEFAULT_ROLLING_PAIRS = 5_000
# How many keys the forecasts-vs-truth figure shows, and how many of each key's last pairs.
PLOT_KEYS = 3
PLOT_POINTS = 60

# ---- pure scoring -------------------------------------------------------------------------


def next_index(keys: Sequence[str]) -> np.ndarray:
    """Return, per event, the index of the same key's next event, or -1 for a key's last one.

    Args:
        keys: The key of each event, in stream order.
    """
    following = np.full(len(keys), -1, dtype=np.int64)
    last: dict[str, int] = {}
    for index, key in enumerate(keys):
        previous = last.get(key)
        if previous is not None:
            following[previous] = index
        last[key] = index
    return following


@dataclass(frozen=True)
class Pairs:
    """The scored events: forecast made for event `source[i]` against the value at `target[i]`.

    Attributes:
        source: Index of event *t*, whose forecast is scored.
        target: Index of event *t+1*, the same key's next event, whose value is the truth.
    """

    source: np.ndarray
    target: np.ndarray


def scored_pairs(keys: Sequence[str]) -> Pairs:
    """Return every (t, t+1) pair of consecutive events of one key, ordered by t+1.

    Ordering by the truth's position makes the error series run in stream time, as a live
    prequential score would accumulate.
    """
    following = next_index(keys)
    source = np.flatnonzero(following >= 0)
    target = following[source]
    order = np.argsort(target, kind="stable")
    return Pairs(source=source[order], target=target[order])


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
        forecasts: Per event, the forecast made for it (of its key's next value); NaN where none.
        truth: Per event, its target value.
        pairs: The scored pairs.

    Raises:
        ValueError: A scored event has no forecast: every model must be scored on the same
            pairs, so a missing one is a bug, not something to skip.
    """
    predicted = forecasts[pairs.source]
    missing = np.flatnonzero(~np.isfinite(predicted))
    if missing.size:
        raise ValueError(
            f"{missing.size} scored events have no forecast, first at event {pairs.source[0]}"
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


# ---- baselines and the prequential loop ---------------------------------------------------


class Forecaster(Protocol):
    """A one-step-ahead forecaster of many keyed univariate series, learning online."""

    def forecast_one(self, key: str) -> float:
        """Forecast the key's next value from what it has learnt (it has learnt one at least)."""
        ...

    def learn_one(self, key: str, value: float, features: np.ndarray) -> None:
        """Learn the key's newest value; `features` are its event's features."""
        ...


def prequential_forecasts(
    model: Forecaster, keys: Sequence[str], values: np.ndarray, features: Sequence[np.ndarray]
) -> np.ndarray:
    """Run a forecaster prequentially; return per event the forecast made for it.

    For each event: if its key has a previous event *t*, the model forecasts this value before
    it sees it, and that forecast is stored as the forecast for *t*; then the model learns the
    value. A key's last event gets no forecast (NaN): nothing follows to score it against.

    Args:
        model: The forecaster.
        keys: Per event, its key.
        values: Per event, its target value.
        features: Per event, its features.
    """
    forecasts = np.full(len(keys), np.nan)
    last: dict[str, int] = {}
    for index, key in enumerate(keys):
        previous = last.get(key)
        if previous is not None:
            forecasts[previous] = model.forecast_one(key)
        model.learn_one(key, float(values[index]), features[index])
        last[key] = index
    return forecasts


class NaiveLast:
    """Forecast a key's next value as its last value."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def forecast_one(self, key: str) -> float:
        return self._last[key]

    def learn_one(self, key: str, value: float, features: np.ndarray) -> None:
        self._last[key] = value


class SeasonalNaive:
    """Forecast a key's next value as its value one season before it.

    Until a key has a full season of history, the last value stands in (only the first
    `season - 1` forecasts of each key).
    """

    def __init__(self, season: int) -> None:
        if season < 1:
            raise ValueError(f"season must be >= 1, got {season}")
        self.season = season
        self._history: dict[str, list[float]] = {}

    def forecast_one(self, key: str) -> float:
        history = self._history[key]
        return history[-self.season] if len(history) >= self.season else history[-1]

    def learn_one(self, key: str, value: float, features: np.ndarray) -> None:
        history = self._history.setdefault(key, [])
        history.append(value)
        if len(history) > self.season:
            del history[0]


class RiverSnarimax:
    """River's SNARIMAX, one model per key, on the target value alone.

    The regressor is River's default (standard scaling, then linear regression) with plain SGD
    at `learning_rate`: River's default 0.01 diverges on counts in the thousands.
    """

    def __init__(
        self,
        p: int = 7,
        d: int = 1,
        q: int = 7,
        m: int = 1,
        sp: int = 0,
        sd: int = 0,
        sq: int = 0,
        learning_rate: float = 0.001,
    ) -> None:
        from river import time_series  # the `eval` extra

        self._time_series = time_series
        self.order = {"p": p, "d": d, "q": q, "m": m, "sp": sp, "sd": sd, "sq": sq}
        self.learning_rate = learning_rate
        self._models: dict[str, Any] = {}

    def _new(self) -> Any:
        from river import linear_model, optim, preprocessing

        regressor = preprocessing.StandardScaler() | linear_model.LinearRegression(
            optimizer=optim.SGD(self.learning_rate)
        )
        return self._time_series.SNARIMAX(**self.order, regressor=regressor)

    def forecast_one(self, key: str) -> float:
        return float(self._models[key].forecast(horizon=1)[0])

    def learn_one(self, key: str, value: float, features: np.ndarray) -> None:
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = self._new()
        model.learn_one(value)

    def describe(self) -> str:
        o = self.order
        seasonal = (
            f"({o['sp']},{o['sd']},{o['sq']})_{o['m']}" if o["sp"] or o["sd"] or o["sq"] else ""
        )
        return f"SNARIMAX({o['p']},{o['d']},{o['q']}){seasonal} lr {self.learning_rate:g}"


# ---- lstmd --------------------------------------------------------------------------------


def eval_settings(settings: Settings, dataset: EvalDataset) -> Settings:
    """Fit the model shape to the data set and close batches by size only (deterministic)."""
    model = settings.model.model_copy(
        update={
            "n_features": dataset.n_features(),
            "n_targets": len(dataset.target_index),
            "target_index": dataset.target_index,
        }
    )
    stream = settings.stream.model_copy(update={"max_batch_wait_ms": 0})
    return settings.model_copy(update={"model": model, "stream": stream})


@dataclass
class LstmdRun:
    """What one lstmd pass over a data set produced, beyond its forecasts."""

    forecasts: np.ndarray
    seconds: float
    build_seconds: float
    train_steps: int
    inference_calls: int
    resets: dict[str, int]
    untrained: int
    rejected: int
    learner_mae: float  # the learner's own prequential MAE: a cross-check of the scoring
    learner_naive_mae: float


def lstmd_forecasts(
    settings: Settings,
    messages: Sequence[tuple[bytes | None, bytes]],
    poll_events: int = DEFAULT_POLL_EVENTS,
    model_factory: Callable[[Settings], Any] | None = None,
) -> LstmdRun:
    """Run messages through the daemon's learning path; return per event its published forecast.

    The loop is the runner's without Kafka: decode, ingest, `end_of_poll` after every
    `poll_events` messages, `drain` at the end. Throughput counts decoding too.

    Args:
        settings: Complete settings (see `eval_settings`).
        messages: (Kafka key, JSON value) pairs in stream order; message i has offset i.
        poll_events: Messages per simulated poll.
        model_factory: Builds the model from the settings; the real StatefulLSTM by default.
    """
    from daemon.core.learner import OnlineLearner  # the engine is pure, but keep imports together

    if model_factory is None:
        configure_tensorflow()
        from daemon.model.lstm import StatefulLSTM

        def model_factory(s: Settings) -> Any:
            return StatefulLSTM(s.model)

    built = time.perf_counter()
    learner = OnlineLearner(settings, model_factory(settings))
    build_seconds = time.perf_counter() - built
    forecasts = np.full(len(messages), np.nan)
    m, stream = settings.model, settings.stream
    rejected = 0

    def collect() -> None:
        for prediction in learner.take_outbox():
            forecasts[prediction.offset] = float(prediction.prediction[0])

    started = time.perf_counter()
    for offset, (key, value) in enumerate(messages):
        event = decode_event(value, key, m.n_features, m.n_targets, stream.max_event_bytes)
        if isinstance(event, Rejection) or learner.ingest(event, 0, offset) is not None:
            rejected += 1
        if offset % poll_events == poll_events - 1:
            learner.end_of_poll()
            collect()
    learner.drain()
    collect()
    seconds = time.perf_counter() - started
    return LstmdRun(
        forecasts=forecasts,
        seconds=seconds,
        build_seconds=build_seconds,
        train_steps=learner.step,
        inference_calls=learner.infer_calls,
        resets=dict(learner.resets),
        untrained=learner.untrained,
        rejected=rejected,
        learner_mae=learner.prequential.model_mae,
        learner_naive_mae=learner.prequential.naive_mae,
    )


# ---- the runner ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """The decoded events of a data set, as the evaluation needs them."""

    keys: list[str]
    ts: np.ndarray
    values: np.ndarray
    features: list[np.ndarray]


def decode_stream(dataset: EvalDataset) -> Stream:
    """Decode every message with the daemon's decoder.

    Raises:
        ValueError: A message is not a valid event: evaluation data must be clean.
    """
    events: list[Event] = []
    for index, (key, value) in enumerate(dataset.messages):
        event = decode_event(value, key, dataset.n_features(), len(dataset.target_index))
        if isinstance(event, Rejection):
            raise ValueError(f"message {index} is not a valid event: {event.reason}")
        events.append(event)
    target = dataset.target_index[0]
    return Stream(
        keys=[e.key for e in events],
        ts=np.array([e.ts for e in events], dtype=np.float64),
        values=np.array([e.features[target] for e in events], dtype=np.float64),
        features=[e.features for e in events],
    )


@dataclass
class ModelResult:
    """One model's scores on a data set."""

    name: str
    description: str
    overall: Errors
    per_key: dict[str, Errors]
    seconds: float
    events_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationReport:
    """Everything `run_evaluation` measured; `to_json` is what report.json holds."""

    dataset: str
    events: int
    keys: int
    scored_pairs: int
    season: int
    season_label: str
    settings: dict[str, Any]
    poll_events: int
    results: list[ModelResult]
    wall_seconds: float
    files: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON data."""
        return _clean(asdict(self))

    def result(self, name: str) -> ModelResult:
        """Return the result of the model called `name`."""
        return next(r for r in self.results if r.name == name)


def _clean(value: Any) -> Any:
    """Make floats JSON-safe (NaN → None) and round them to what is meaningful."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


MODELS = ("lstmd", "lstmd_stateless", "naive", "seasonal_naive", "snarimax")


def run_evaluation(
    settings: Settings,
    dataset: str = "birthdays",
    out_dir: Path | None = None,
    limit: int | None = None,
    season: int | None = None,
    models: Sequence[str] = MODELS,
    poll_events: int = DEFAULT_POLL_EVENTS,
    snarimax_lr: float = 0.001,
    plots: bool = True,
    out: TextIO = sys.stdout,
) -> EvaluationReport:
    """Evaluate lstmd and the baselines on a data set; write report.md, report.json and PNGs.

    Args:
        settings: The daemon's settings; the model shape is fitted to the data set and batches
            close by size only. `lstmd_stateless` is the same with `reset_every_steps=1`.
        dataset: A name from `daemon.evaluation.datasets.LOADERS` ("birthdays", "elecdemand").
        out_dir: Where to write the report; None writes nothing (the report is returned).
        limit: Evaluate only the first `limit` events; None takes all.
        season: Season of the seasonal naive baseline in events of one key; None takes the
            data set's (7 for Birthdays).
        models: Which of MODELS to run, in report order. `snarimax` needs River.
        poll_events: Events per simulated consumer poll (`end_of_poll` after each).
        snarimax_lr: SGD learning rate of SNARIMAX's linear regression.
        plots: Write the PNGs (needs matplotlib).
        out: Where progress lines go.

    Returns:
        The report.

    Raises:
        ValueError: Unknown data set or model name.
    """
    started = time.perf_counter()
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    data = load_eval_dataset(dataset, limit)
    season = season or data.season
    settings = eval_settings(settings, data)
    stream = decode_stream(data)
    pairs = scored_pairs(stream.keys)
    print(
        f"lstmd evaluate: {data.name}, {len(stream.keys):,} events, {len(data.keys)} keys, "
        f"{pairs.source.size:,} scored pairs",
        file=out,
        flush=True,
    )
    results: list[ModelResult] = []
    forecasts: dict[str, np.ndarray] = {}
    for name in models:
        result, predicted = _run_model(
            name, settings, data, stream, pairs, season, poll_events, snarimax_lr
        )
        results.append(result)
        forecasts[name] = predicted
        print(
            f"  {result.description:<44} MAE {result.overall.mae:10.4f}  "
            f"RMSE {result.overall.rmse:10.4f}  {result.events_per_s:>10,.0f} events/s",
            file=out,
            flush=True,
        )
    report = EvaluationReport(
        dataset=data.name,
        events=len(stream.keys),
        keys=len(data.keys),
        scored_pairs=int(pairs.source.size),
        season=season,
        season_label=data.season_label,
        settings=settings.model_dump(mode="json", include={"model", "stream"}),
        poll_events=poll_events,
        results=results,
        wall_seconds=0.0,
        files={},
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if plots:
            report.files.update(write_plots(out_dir, stream, pairs, forecasts, results))
        report.wall_seconds = time.perf_counter() - started
        report.files["markdown"] = "report.md"
        report.files["json"] = "report.json"
        (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (out_dir / "report.json").write_text(
            json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8"
        )
    report.wall_seconds = time.perf_counter() - started
    return report


def _run_model(
    name: str,
    settings: Settings,
    data: EvalDataset,
    stream: Stream,
    pairs: Pairs,
    season: int,
    poll_events: int,
    snarimax_lr: float,
) -> tuple[ModelResult, np.ndarray]:
    extra: dict[str, Any] = {}
    if name in ("lstmd", "lstmd_stateless"):
        run_settings = settings
        if name == "lstmd_stateless":
            stream_settings = settings.stream.model_copy(update={"reset_every_steps": 1})
            run_settings = settings.model_copy(update={"stream": stream_settings})
        run = lstmd_forecasts(run_settings, data.messages, poll_events)
        predicted, seconds = run.forecasts, run.seconds
        m = run_settings.model
        state = "stateless, reset every step" if name == "lstmd_stateless" else "stateful"
        description = (
            f"lstmd ({state}; T {m.window}, {m.layers}x{m.units}, lr {m.learning_rate:g}, "
            f"B {m.batch_size})"
        )
        extra = {k: v for k, v in asdict(run).items() if k not in ("forecasts", "seconds")}
    else:
        model: Forecaster
        if name == "naive":
            model, description = NaiveLast(), "naive last value"
        elif name == "seasonal_naive":
            model, description = SeasonalNaive(season), f"seasonal naive ({data.season_label})"
        else:
            model = RiverSnarimax(learning_rate=snarimax_lr)
            description = f"River {model.describe()}"
        began = time.perf_counter()
        predicted = prequential_forecasts(model, stream.keys, stream.values, stream.features)
        seconds = time.perf_counter() - began
    errors = pair_errors(predicted, stream.values, pairs)
    result = ModelResult(
        name=name,
        description=description,
        overall=error_summary(errors),
        per_key=per_key_errors(errors, stream.keys, pairs),
        seconds=seconds,
        events_per_s=len(stream.keys) / seconds if seconds > 0 else math.inf,
        extra=extra,
    )
    return result, predicted


# ---- report -------------------------------------------------------------------------------


def render_markdown(report: EvaluationReport) -> str:
    """Render the report as markdown: overall table, per-key table, settings, figures."""
    lines = [
        f"# Forecast quality: {report.dataset}",
        "",
        f"{report.events:,} events, {report.keys} keys, {report.scored_pairs:,} scored pairs "
        "(each key's consecutive events: the forecast made for *t* against *t+1*), prequential "
        "and one step ahead. Every model is scored on the same pairs.",
        "",
        "| model | MAE | RMSE | events/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in report.results:
        lines.append(
            f"| {r.description} | {r.overall.mae:.3f} | {r.overall.rmse:.3f} | "
            f"{r.events_per_s:,.0f} |"
        )
    lines += [
        "",
        "lstmd's throughput covers decoding, ingest, train and inference steps and the final "
        "drain (model build and tracing excluded); the baselines' covers their own loop over "
        "already decoded values.",
        "",
    ]
    if "rolling" in report.files:
        lines += [f"![rolling MAE]({report.files['rolling']})", ""]
    if "forecasts" in report.files:
        lines += [f"![forecasts vs truth]({report.files['forecasts']})", ""]
    lines += ["## MAE per key", "", _per_key_table(report), ""]
    lines += ["## Settings", "", "```json", json.dumps(report.settings, indent=2), "```", ""]
    lines += [f"Wall time of this evaluation: {report.wall_seconds:.0f} s.", ""]
    return "\n".join(lines)


def _per_key_table(report: EvaluationReport) -> str:
    names = [r.name for r in report.results]
    header = "| key | " + " | ".join(names) + " |"
    rule = "| --- |" + " ---: |" * len(names)
    keys = sorted(report.results[0].per_key) if report.results else []
    rows = [
        f"| {key} | " + " | ".join(f"{r.per_key[key].mae:.2f}" for r in report.results) + " |"
        for key in keys
    ]
    return "\n".join([header, rule, *rows])


def write_plots(
    out_dir: Path,
    stream: Stream,
    pairs: Pairs,
    forecasts: dict[str, np.ndarray],
    results: list[ModelResult],
    rolling_pairs: int = DEFAULT_ROLLING_PAIRS,
) -> dict[str, str]:
    """Write rolling.png (rolling MAE over time) and forecasts.png (a few keys' last pairs).

    Returns:
        File names by figure, relative to `out_dir`.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    labels = {r.name: r.description.split(" (")[0] for r in results}
    labels.update({"lstmd_stateless": "lstmd stateless"})
    dates = (stream.ts[pairs.target] * 1e6).astype("datetime64[us]").astype(object)
    window = min(rolling_pairs, max(pairs.source.size // 20, 1))

    fig, ax = plt.subplots(figsize=(9, 4), dpi=90)
    for name, predicted in forecasts.items():
        errors = pair_errors(predicted, stream.values, pairs)
        # The first `window` points average fewer pairs and only add noise at the start.
        ax.plot(dates[window:], rolling_mae(errors, window)[window:], label=labels[name], lw=1.2)
    ax.set_title(f"Rolling MAE over the last {window:,} scored pairs")
    ax.set_ylabel("MAE")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.grid(alpha=0.3)
    # A fixed corner: "best" scans every point of every line, slow on 10^5 points (and warns).
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "rolling.png")
    plt.close(fig)

    keys = _plot_keys(stream.keys, stream.values)
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 2.4 * len(keys)), dpi=72, squeeze=False)
    pair_keys = np.asarray(stream.keys, dtype=object)[pairs.target]
    for ax, key in zip(axes[:, 0], keys, strict=True):
        chosen = np.flatnonzero(pair_keys == key)[-PLOT_POINTS:]
        when = dates[chosen]
        ax.plot(
            when, stream.values[pairs.target[chosen]], color="black", linewidth=2, label="truth"
        )
        for name, predicted in forecasts.items():
            ax.plot(when, predicted[pairs.source[chosen]], linewidth=1, label=labels[name])
        ax.set_title(f"{key}: one-step forecasts vs truth, last {chosen.size} events", fontsize=9)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "forecasts.png")
    plt.close(fig)
    return {"rolling": "rolling.png", "forecasts": "forecasts.png"}


def _plot_keys(keys: Sequence[str], values: np.ndarray) -> list[str]:
    """Pick up to PLOT_KEYS keys: the largest, the median and the smallest by mean value."""
    distinct = sorted(set(keys))
    if len(distinct) <= PLOT_KEYS:
        return distinct
    key_array = np.asarray(keys, dtype=object)
    by_level = sorted(distinct, key=lambda key: -float(values[key_array == key].mean()))
    return [by_level[0], by_level[len(by_level) // 2], by_level[-1]]
