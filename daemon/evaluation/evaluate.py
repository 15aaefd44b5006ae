"""Forecast quality: lstmd against baselines, prequential, on the same scored events.

Every model sees the events of a data set in the same order and forecasts each key's next target
value(s) before it learns from that value (prequential: predict, score, then learn). All models
are scored on exactly the same pairs (`daemon.evaluation.scoring`). This module only wires the
parts: data (`datasets`), baselines (`baselines`), the lstmd run (`lstmd_run`), the report
(`report`) and figures (`plots`).

Models: `lstmd` runs on the data's raw columns (its derived features do the rest);
`lstmd_handbuilt` on the raw columns plus the next-time calendar the data set's loader built by
hand (where it did), a separate, labelled row; `lstmd_stateless` resets every step. The anchors
(`autoets`, `lightgbm`) are what a data scientist would deploy instead (`anchors.py`).

Besides MAE every model gets MASE (per key, its MAE over seasonal naive's on the same pairs,
averaged over keys: big keys do not drown small ones) and, where it has intervals, their
coverage and interval score per level, on the pairs where every model with intervals has one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from daemon.evaluation.anchors import AnchorRun
from daemon.evaluation.baselines import (
    BASELINES,
    SNARIMAX_LEARNING_RATE,
    SeasonalNaive,
    make_baseline,
)
from daemon.evaluation.baselines import prequential_forecasts as baseline_forecasts
from daemon.evaluation.datasets import EvalDataset, detect_season, load_eval_dataset
from daemon.evaluation.interval_scoring import conformal_bounds, interval_score, pair_bounds
from daemon.evaluation.lstmd_run import (
    DEFAULT_POLL_EVENTS,
    eval_settings,
    horizon_of,
    lstmd_forecasts,
)
from daemon.evaluation.report import EvaluationReport, ModelResult, cell, render_markdown
from daemon.evaluation.scoring import (
    Pairs,
    error_summary,
    pair_errors,
    per_key_errors,
    scored_pairs,
)
from daemon.evaluation.stream import Stream, decode_stream
from daemon.settings import Settings

LSTMD_MODELS = ("lstmd", "lstmd_handbuilt", "lstmd_stateless")
# autoets_calibrated: AutoETS's forecasts with lstmd's interval calibration instead of the
# model's own intervals (the same fit, run once), to compare the two calibrations.
ANCHORS = ("autoets", "autoets_calibrated", "lightgbm")
MODELS = (*LSTMD_MODELS, *BASELINES, *ANCHORS)
# What `lstmd evaluate` runs by default: the stateless ablation is opt-in (it doubles the time).
DEFAULT_MODELS = ("lstmd", "lstmd_handbuilt", *BASELINES, *ANCHORS)

# Bounds per model: {level: [events] or [events, H]} lower and upper.
Bounds = tuple[dict[float, np.ndarray], dict[float, np.ndarray]]


def run_evaluation(
    settings: Settings,
    dataset: str | EvalDataset = "birthdays",
    out_dir: Path | None = None,
    limit: int | None = None,
    season: int | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    poll_events: int = DEFAULT_POLL_EVENTS,
    snarimax_lr: float = SNARIMAX_LEARNING_RATE,
    plots: bool = True,
    out: TextIO = sys.stdout,
    model_factory: Any = None,
) -> EvaluationReport:
    """Evaluate lstmd and the baselines on a data set; write report.md, report.json and PNGs.

    Args:
        settings: The daemon's settings; the model shape is fitted to the data and batches
            close by size only.
        dataset: A name from `datasets.LOADERS`, or a loaded data set (e.g. a user's CSV).
        out_dir: Where to write the report; None writes nothing (the report is returned).
        limit: Evaluate only the first `limit` events of a named data set; None takes all.
        season: Season m of the seasonal baselines, in events of one key; None takes the data
            set's, or detects it from the cadence.
        models: Which of MODELS to run, in report order; `lstmd_handbuilt` is skipped on data
            without hand-built features. SNARIMAX needs River.
        poll_events: Events per simulated consumer poll (`end_of_poll` after each).
        snarimax_lr: SGD learning rate of SNARIMAX's linear regression.
        plots: Write the PNGs (needs matplotlib).
        out: Where progress lines go.
        model_factory: Builds the lstmd model from settings; the real StatefulLSTM by default.

    Raises:
        ValueError: Unknown data set or model name, unclean data, or no season to be found.
    """
    started = time.perf_counter()
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    data = load_eval_dataset(dataset, limit) if isinstance(dataset, str) else dataset
    stream = decode_stream(data.messages, data.n_features(), data.target_index[0])
    season, season_label = _season(data, stream, season)
    horizon = horizon_of(settings)
    pairs = [scored_pairs(stream.keys, h) for h in range(1, horizon + 1)]
    print(
        f"lstmd evaluate: {data.name}, {len(stream.keys):,} events, {len(data.keys)} keys, "
        f"{pairs[0].source.size:,} scored pairs, season {season}",
        file=out,
        flush=True,
    )
    runnable = [n for n in models if n != "lstmd_handbuilt" or data.n_raw() < data.n_features()]
    results, forecasts, bounds = [], {}, {}
    scale = _seasonal_naive_scale(stream, pairs[0], season)
    fitted: dict[str, AnchorRun] = {}  # AutoETS, fitted once for both of its rows
    for name in runnable:
        intervals: Bounds | None = None
        if name in LSTMD_MODELS:
            predicted, seconds, description, extra, intervals = _run_lstmd(
                name, settings, data, poll_events, model_factory
            )
        elif name in ANCHORS:
            predicted, seconds, description, extra, intervals = _run_anchor(
                name, settings, data, stream, season, fitted
            )
        else:
            model = make_baseline(name, season, snarimax_lr)
            began = time.perf_counter()
            predicted = baseline_forecasts(model, stream.keys, stream.values, horizon)
            seconds, description, extra = time.perf_counter() - began, model.describe(), {}
        result = _score(name, description, predicted, stream, pairs, seconds, extra)
        result.mase = _mase(predicted, stream, pairs[0], scale)
        results.append(result)
        forecasts[name] = predicted
        if intervals is not None and intervals[0]:
            bounds[name] = intervals
        print(
            f"  {result.description[:60]:<60} MAE {result.overall.mae:10.4f}  "
            f"{result.events_per_s:>10,.0f} events/s",
            file=out,
            flush=True,
        )
    _score_intervals(results, bounds, stream, pairs[0])
    lstmd_settings = eval_settings(settings, data.n_raw(), data.target_index)
    report = EvaluationReport(
        dataset=data.name,
        events=len(stream.keys),
        keys=len(data.keys),
        scored_pairs=int(pairs[0].source.size),
        season=season,
        season_label=season_label,
        horizon=horizon,
        settings=lstmd_settings.model_dump(mode="json", include={"model", "stream", "intervals"}),
        poll_events=poll_events,
        results=results,
    )
    if out_dir is not None:
        write_report(report, out_dir, stream, pairs[0], forecasts if plots else None, started)
    report.wall_seconds = time.perf_counter() - started
    return report


def _season(data: EvalDataset, stream: Stream, season: int | None) -> tuple[int, str]:
    if season:
        return season, "given"
    if data.season:
        return data.season, data.season_label
    return detect_season(stream.times_by_key())


def _run_lstmd(
    name: str, settings: Settings, data: EvalDataset, poll_events: int, model_factory: Any
) -> tuple[np.ndarray, float, str, dict[str, Any], Bounds]:
    handbuilt = name == "lstmd_handbuilt"
    messages = data.messages if handbuilt else data.raw_messages()
    n_features = data.n_features() if handbuilt else data.n_raw()
    run_settings = eval_settings(settings, n_features, data.target_index)
    if name == "lstmd_stateless":
        stream_settings = run_settings.stream.model_copy(update={"reset_every_steps": 1})
        run_settings = run_settings.model_copy(update={"stream": stream_settings})
    run = lstmd_forecasts(run_settings, messages, poll_events, model_factory)
    columns = ", ".join(data.feature_names[:n_features])
    label = {
        "lstmd": "raw columns",
        "lstmd_handbuilt": "raw columns + hand-built next-time calendar",
        "lstmd_stateless": "raw columns, reset every step",
    }[name]
    return (
        run.forecasts,
        run.seconds,
        f"lstmd ({label}: {columns}; {_describe(run_settings)})",
        {
            "build_seconds": run.build_seconds,
            "rejected": run.rejected,
            **run.facts,
        },
        (run.lower, run.upper),
    )


def _run_anchor(
    name: str,
    settings: Settings,
    data: EvalDataset,
    stream: Stream,
    season: int,
    fitted: dict[str, AnchorRun],
) -> tuple[np.ndarray, float, str, dict[str, Any], Bounds]:
    """Run AutoETS per key or the global LightGBM; LightGBM's intervals are lstmd's calibration.

    `fitted` keeps the AutoETS run for autoets_calibrated, which reuses its forecasts.
    """
    from daemon.evaluation.autoets import AutoEtsAnchor
    from daemon.evaluation.global_gbm import GlobalGbmAnchor

    levels = settings.intervals.levels
    run: AnchorRun
    if name in ("autoets", "autoets_calibrated"):
        if "autoets" not in fitted:
            fitted["autoets"] = AutoEtsAnchor(season, levels=levels).run(stream)
        own = fitted["autoets"]
        run = (
            own
            if name == "autoets"
            else AnchorRun(own.forecasts, own.seconds, own.fit_seconds, own.refits, own.description)
        )
    else:
        run = GlobalGbmAnchor(season, seed=settings.model.seed).run(stream, data.target_index[0])
    description = run.description
    lower, upper = run.lower, run.upper
    if not lower and levels:
        began = time.perf_counter()
        c = settings.intervals
        lower, upper = conformal_bounds(stream, run.forecasts, levels, c.rate, c.warmup)
        run.seconds += time.perf_counter() - began
        description += "; intervals: lstmd's online calibration of its residuals"
    extra = {"fit_seconds": run.fit_seconds, "refits": run.refits}
    return run.forecasts, run.seconds, description, extra, (lower, upper)


def _seasonal_naive_scale(stream: Stream, pairs: Pairs, season: int) -> dict[str, float]:
    """Return per key seasonal naive's one-step MAE on the scored pairs: MASE's denominator."""
    naive = baseline_forecasts(SeasonalNaive(season), stream.keys, stream.values, 1)
    errors = np.abs(pair_errors(naive, stream.values, pairs))
    return {key: e.mae for key, e in per_key_errors(errors, stream.keys, pairs).items()}


def _mase(predicted: np.ndarray, stream: Stream, pairs: Pairs, scale: dict[str, float]) -> float:
    """Return the mean over keys of the key's MAE over seasonal naive's (keys it scores > 0)."""
    errors = pair_errors(predicted, stream.values, pairs)
    by_key = per_key_errors(errors, stream.keys, pairs)
    ratios = [e.mae / scale[k] for k, e in by_key.items() if scale.get(k, 0) > 0]
    return float(np.mean(ratios)) if ratios else math.nan


def _score_intervals(
    results: list[ModelResult], bounds: dict[str, Bounds], stream: Stream, pairs: Pairs
) -> None:
    """Score every model's intervals on the pairs where all of them have one (step 1)."""
    if not bounds:
        return
    truth = stream.values[pairs.target]
    common = np.ones(pairs.source.size, bool)
    laid = {}
    for name, (lower, upper) in bounds.items():
        laid[name] = {level: pair_bounds(lower[level], upper[level], pairs) for level in lower}
        for low, high in laid[name].values():
            common &= np.isfinite(low) & np.isfinite(high)
    for result in results:
        if result.name not in laid:
            continue
        for level, (low, high) in laid[result.name].items():
            coverage, score = interval_score(low[common], high[common], truth[common], level)
            result.coverage[level], result.interval_score[level] = coverage, score
            own = np.isfinite(low) & np.isfinite(high)
            result.coverage_all[level] = interval_score(low[own], high[own], truth[own], level)[0]
        result.interval_pairs = int(common.sum())


def _describe(settings: Settings) -> str:
    """Name lstmd's configuration: shape, optimiser and the derived features in force."""
    m, s = settings.model, settings.stream
    derived = []
    if getattr(s, "derived_calendar", False):
        derived.append("calendar")
    seasons = getattr(s, "seasons", ())
    if seasons == "auto":
        derived.append("lags and steps auto")
    elif seasons:
        derived.append("lags and steps " + "/".join(map(str, seasons)))
    if getattr(s, "derived_smoothing", False):
        derived.append("smoothed")
    levels = settings.intervals.levels
    text = (
        f"T {m.window}, {m.layers}x{m.units}, {m.loss} loss, lr {m.learning_rate:g}, "
        f"B {m.batch_size}, "
        f"{s.target_scaling} target, derived: {' + '.join(derived) or 'none'}"
        + (f"; intervals {'/'.join(f'{v:g}' for v in levels)}" if levels else "")
    )
    return text + (f", H {horizon_of(settings)}" if horizon_of(settings) > 1 else "")


def _score(
    name: str,
    description: str,
    predicted: np.ndarray,
    stream: Stream,
    pairs: list[Pairs],
    seconds: float,
    extra: dict[str, Any],
) -> ModelResult:
    # The anchors forecast one step: they are scored at h = 1 only.
    width = 1 if predicted.ndim == 1 else predicted.shape[1]
    steps = [error_summary(pair_errors(predicted, stream.values, p)) for p in pairs[:width]]
    first = pair_errors(predicted, stream.values, pairs[0])
    return ModelResult(
        name=name,
        description=description,
        overall=steps[0],
        per_key=per_key_errors(first, stream.keys, pairs[0]),
        seconds=seconds,
        events_per_s=len(stream.keys) / seconds if seconds > 0 else math.inf,
        per_step=steps,
        extra=extra,
    )


def write_report(
    report: EvaluationReport,
    out_dir: Path,
    stream: Stream,
    pairs: Pairs,
    forecasts: dict[str, np.ndarray] | None,
    started: float,
) -> None:
    """Write report.md, report.json and (when forecasts are given) the figures into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if forecasts is not None:
        from daemon.evaluation.plots import write_plots

        report.files.update(write_plots(out_dir, stream, pairs, forecasts, report.results))
    report.wall_seconds = time.perf_counter() - started
    report.files["markdown"] = "report.md"
    report.files["json"] = "report.json"
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out_dir / "report.json").write_text(
        json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8"
    )


def _pair(values: dict[float, float], spec: str) -> str:
    """Return a result's figures at levels 0.8 and 0.95 as "a / b" ("-" without intervals)."""
    if not values:
        return "-"
    return " / ".join(format(values.get(level, math.nan), spec) for level in (0.8, 0.95))


def summary_markdown(reports: Sequence[EvaluationReport]) -> str:
    """Render one table over several data sets: every model's MAE and events/s per data set."""
    lines = [
        "# Forecast quality: all built-in data sets",
        "",
        "Prequential one-step MAE on the same scored pairs per data set; "
        "`lstmd evaluate --dataset all` regenerates this page and every report under it.",
        "",
    ]
    for report in reports:
        lines += [
            f"## {report.dataset}",
            "",
            f"{report.events:,} events, {report.keys} keys, season m = {report.season}. "
            f"{report.headline()}.",
            "",
            "| model | MAE | MASE | median key's MAE | coverage 80 / 95 | interval score 80 / 95 "
            "| events/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {cell(r.description)} | {r.overall.mae:.4g} | {r.mase:.3f} | "
            f"{r.median_key_mae():.4g} | {_pair(r.coverage, '.3f')} | "
            f"{_pair(r.interval_score, '.4g')} | {r.events_per_s:,.0f} |"
            for r in report.results
        ]
        lines.append("")
    return "\n".join(lines)
