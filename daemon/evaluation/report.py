"""The report: what an evaluation measured, as JSON data and as markdown."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from daemon.evaluation.scoring import Errors

# Past this many keys the per-key table stays in report.json only (us_employment has 148).
MAX_KEYS_IN_MARKDOWN = 60


@dataclass
class ModelResult:
    """One model's scores on a data set.

    Attributes:
        name: Short name (lstmd, naive, snarimax_seasonal, ...).
        description: The model with its full configuration.
        overall: One step ahead, all scored pairs: the headline figure.
        per_key: One step ahead, by key.
        seconds: Wall time of its prequential loop.
        events_per_s: Events through that loop per second.
        per_step: Step h at index h-1 (H > 1 only when the lstmd run forecasts a horizon).
        extra: Facts of the run (lstmd: train steps, resets, the learner's own MAE; anchors:
            fit seconds and refits).
        mase: Mean over keys of the key's MAE over seasonal naive's on the same pairs.
        coverage, interval_score: Per level, on the pairs where every model with intervals has
            one (`interval_pairs` of them).
        coverage_all: Per level, on every pair where this model has an interval.
    """

    name: str
    description: str
    overall: Errors
    per_key: dict[str, Errors]
    seconds: float
    events_per_s: float
    per_step: list[Errors] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    mase: float = math.nan
    coverage: dict[float, float] = field(default_factory=dict)
    interval_score: dict[float, float] = field(default_factory=dict)
    coverage_all: dict[float, float] = field(default_factory=dict)
    interval_pairs: int = 0

    def median_key_mae(self) -> float:
        """Return the median over keys of each key's MAE (NaN without keys)."""
        maes = [e.mae for e in self.per_key.values()]
        return float(np.median(maes)) if maes else math.nan

    @property
    def is_lstmd(self) -> bool:
        """Whether this is an lstmd run (not a baseline)."""
        return self.name.startswith("lstmd")


@dataclass
class EvaluationReport:
    """Everything an evaluation measured; `to_json` is what report.json holds."""

    dataset: str
    events: int
    keys: int
    scored_pairs: int
    season: int
    season_label: str
    horizon: int
    settings: dict[str, Any]
    poll_events: int
    results: list[ModelResult]
    wall_seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON data, with the headline."""
        data = _clean(asdict(self))
        data["headline"] = self.headline()
        return data

    def result(self, name: str) -> ModelResult:
        """Return the result of the model called `name`."""
        return next(r for r in self.results if r.name == name)

    def best_baseline(self) -> ModelResult | None:
        """Return the baseline with the lowest one-step MAE, or None without baselines."""
        baselines = [r for r in self.results if not r.is_lstmd and math.isfinite(r.overall.mae)]
        return min(baselines, key=lambda r: r.overall.mae, default=None)

    def headline(self) -> str:
        """Return one sentence: lstmd (raw columns) against the best baseline on this data."""
        best = self.best_baseline()
        lstmd = next((r for r in self.results if r.name == "lstmd"), None)
        if best is None:
            return "no baseline was run"
        if lstmd is None:
            return f"best baseline: {best.description}, MAE {best.overall.mae:.4g} (lstmd not run)"
        ratio = lstmd.overall.mae / best.overall.mae
        verdict = (
            f"{(1 - ratio) * 100:.1f}% better than"
            if ratio < 1
            else f"{(ratio - 1) * 100:.1f}% worse than"
        )
        return (
            f"lstmd MAE {lstmd.overall.mae:.4g} is {verdict} the best baseline, "
            f"{best.description}, MAE {best.overall.mae:.4g}"
        )


def _clean(value: Any) -> Any:
    """Make floats JSON-safe (NaN → None) and round them to what is meaningful."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def cell(text: str) -> str:
    """Escape a markdown table cell ("StandardScaler | LinearRegression" holds a pipe)."""
    return text.replace("|", "\\|")


def render_markdown(report: EvaluationReport) -> str:
    """Render the report: headline, overall table, steps ahead, throughput, per key, settings."""
    lines = [
        f"# Forecast quality: {report.dataset}",
        "",
        f"**{report.headline()}.**",
        "",
        f"{report.events:,} events, {report.keys} keys, {report.scored_pairs:,} scored pairs "
        "(each key's consecutive events: the forecast made for *t* against *t+1*), prequential "
        f"and one step ahead. Every model is scored on the same pairs. Season m = "
        f"{report.season} ({report.season_label}).",
        "",
        "| model | MAE | MASE | RMSE | median key's MAE | events/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report.results:
        lines.append(
            f"| {cell(r.description)} | {r.overall.mae:.4g} | {r.mase:.4g} | "
            f"{r.overall.rmse:.4g} | {r.median_key_mae():.4g} | {r.events_per_s:,.0f} |"
        )
    lines += [
        "",
        "MASE: per key, the model's MAE over seasonal naive's on the same pairs, averaged over "
        "keys. The median key's MAE shows what pooled MAE hides: one key where a model diverged "
        "(SNARIMAX's SGD after an outlier) dominates the pooled figure.",
    ]
    if any(r.coverage for r in report.results):
        lines += ["", "## Prediction intervals", "", _interval_table(report)]
    lines += ["", _throughput_note(report), ""]
    fitted = [r for r in report.results if "refits" in r.extra]
    if fitted:
        lines += [
            "Refits: "
            + "; ".join(
                f"{r.name} {r.extra['refits']:,} fits in {r.extra['fit_seconds']:.0f} s of its "
                f"{r.seconds:.0f} s"
                for r in fitted
            )
            + ".",
            "",
        ]
    if report.horizon > 1:
        lines += ["## MAE per step ahead", "", _per_step_table(report), ""]
    for name, title in (("rolling", "rolling MAE"), ("forecasts", "forecasts vs truth")):
        if name in report.files:
            lines += [f"![{title}]({report.files[name]})", ""]
    lines += ["## MAE per key", "", _per_key_table(report), ""]
    lines += ["## Settings", "", "```json", json.dumps(report.settings, indent=2), "```", ""]
    lines += [f"Wall time of this evaluation: {report.wall_seconds:.0f} s.", ""]
    return "\n".join(lines)


def _throughput_note(report: EvaluationReport) -> str:
    note = (
        "Throughput, in this run: lstmd's covers decoding, ingest, train and inference steps and "
        "the final drain (model build and tracing excluded); a baseline's covers its own "
        "prequential loop over already decoded values."
    )
    by_name = {r.name: r for r in report.results}
    lstmd = by_name.get("lstmd")
    snarimax = [r for r in report.results if r.name.startswith("snarimax")]
    if lstmd and snarimax:
        # Each SNARIMAX by its configuration ("…, one per key" dropped: all are).
        rates = "; ".join(
            f"{r.description.removesuffix(', one per key')} {r.events_per_s:,.0f}" for r in snarimax
        )
        note += f" lstmd {lstmd.events_per_s:,.0f} events/s against {rates} events/s."
    return note


def _interval_table(report: EvaluationReport) -> str:
    """Coverage and interval score per level of every model with intervals."""
    with_intervals = [r for r in report.results if r.coverage]
    levels = sorted({level for r in with_intervals for level in r.coverage})
    header = "| model | " + " | ".join(
        f"coverage {level:g} | interval score {level:g}" for level in levels
    )
    rows = [header + " |", "| --- |" + " ---: | ---: |" * len(levels)]
    for r in with_intervals:
        cells = [
            f"{r.coverage.get(level, math.nan):.3f} | {r.interval_score.get(level, math.nan):.4g}"
            for level in levels
        ]
        rows.append(f"| {cell(r.description)} | " + " | ".join(cells) + " |")
    pairs = with_intervals[0].interval_pairs
    rows += [
        "",
        f"On the {pairs:,} pairs where every model above has an interval (AutoETS has none "
        "before its first fit). Interval score: width plus 2/(1 − level) times each miss's "
        "distance, in target units; lower is better. Coverage on every pair a model has an "
        "interval for: "
        + "; ".join(
            f"{r.name} "
            + ", ".join(f"{level:g}: {r.coverage_all.get(level, math.nan):.3f}" for level in levels)
            for r in with_intervals
        )
        + ".",
    ]
    return "\n".join(rows)


def _per_step_table(report: EvaluationReport) -> str:
    steps = range(1, report.horizon + 1)
    rows = [
        "| model | " + " | ".join(f"h={h}" for h in steps) + " |",
        "| --- |" + " ---: |" * report.horizon,
    ]
    for r in report.results:
        cells = [f"{e.mae:.4g}" for e in r.per_step] + ["-"] * (report.horizon - len(r.per_step))
        rows.append(f"| {cell(r.description)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _per_key_table(report: EvaluationReport) -> str:
    keys = sorted(report.results[0].per_key) if report.results else []
    if len(keys) > MAX_KEYS_IN_MARKDOWN:
        return f"{len(keys)} keys: see `per_key` in report.json."
    names = [r.name for r in report.results]
    header = "| key | " + " | ".join(names) + " |"
    rule = "| --- |" + " ---: |" * len(names)
    rows = [
        f"| {key} | " + " | ".join(f"{r.per_key[key].mae:.4g}" for r in report.results) + " |"
        for key in keys
    ]
    return "\n".join([header, rule, *rows])
