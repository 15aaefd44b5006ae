"""The whole evaluation: a user's CSV through `lstmd evaluate`, the report and its headline."""

import io
import json

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.cli import main
from daemon.evaluation.datasets import load_csv_dataset
from daemon.evaluation.evaluate import run_evaluation
from daemon.evaluation.report import EvaluationReport, ModelResult, cell, render_markdown
from daemon.evaluation.scoring import Errors
from daemon.settings import ModelSettings, Settings


def _write_csv(path, days=60):
    """Two shops, daily, with a weekly pattern; times as ISO dates, keys interleaved."""
    lines = ["shop,date,sales,visitors"]
    for day in range(days):
        for shop, level in (("north", 100.0), ("south", 40.0)):
            sales = level + 10 * np.sin(2 * np.pi * day / 7) + day * 0.1
            lines.append(f"{shop},2024-{1 + day // 28:02d}-{1 + day % 28:02d},{sales:.3f},{day}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _toy(settings):
    return ToyModel.for_settings(settings)


def test_a_csv_is_evaluated_with_a_detected_season_and_every_model_on_the_same_pairs(tmp_path):
    path = tmp_path / "shops.csv"
    _write_csv(path, days=56)  # 28-day months keep the dates daily
    data = load_csv_dataset(path, "shop", "date", ("sales", "visitors"))
    report = run_evaluation(
        Settings(model=ModelSettings(batch_size=2, window=4)),
        data,
        out_dir=tmp_path / "out",
        models=["lstmd", "naive", "seasonal_naive"],
        plots=False,
        out=io.StringIO(),
        model_factory=_toy,
    )
    assert report.season == 7 and "detected" in report.season_label  # daily data
    assert report.scored_pairs == 2 * 55
    assert [r.overall.count for r in report.results] == [110, 110, 110]
    # A clean weekly pattern: one season back is far better than the last value.
    assert report.result("seasonal_naive").overall.mae < report.result("naive").overall.mae / 3
    assert report.best_baseline().name == "seasonal_naive"
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["headline"].startswith("lstmd MAE") and "seasonal naive (m=7)" in saved["headline"]
    assert saved["settings"]["model"]["n_features"] == 2


def test_lstmd_evaluate_csv_command_writes_a_report(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    path = tmp_path / "shops.csv"
    _write_csv(path, days=28)
    for name, value in {"UNITS": "4", "BATCH_SIZE": "2", "WINDOW": "4"}.items():
        monkeypatch.setenv(f"LSTMD_MODEL__{name}", value)
    out = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--csv",
            str(path),
            "--key",
            "shop",
            "--ts",
            "date",
            "--features",
            "visitors",
            "--target",
            "sales",
            "--models",
            "lstmd,naive",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["dataset"] == "shops.csv" and saved["scored_pairs"] == 2 * 27
    lstmd = saved["results"][0]
    assert lstmd["name"] == "lstmd" and "sales, visitors" in lstmd["description"]
    assert lstmd["overall"]["count"] == 54 and lstmd["events_per_s"] > 0
    text = (out / "report.md").read_text()
    assert "| naive (last value) |" in text
    assert "StandardScaler" not in text  # only lstmd and naive ran
    assert cell("a | b") == "a \\| b"  # a pipe in a model's name must not split its row


def test_lstmd_evaluate_csv_without_its_columns_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "shops.csv"
    _write_csv(path, days=3)
    assert main(["evaluate", "--csv", str(path), "--key", "shop"]) == 2
    assert "--csv needs --ts, --features" in capsys.readouterr().err


def _result(name, maes):
    steps = [Errors(mae, mae, 10) for mae in maes]
    return ModelResult(name, f"{name} model", steps[0], {}, 1.0, 10.0, per_step=steps)


def test_report_compares_lstmd_with_the_best_baseline_and_lists_steps_ahead():
    report = EvaluationReport(
        dataset="toy",
        events=20,
        keys=1,
        scored_pairs=10,
        season=7,
        season_label="a week",
        horizon=2,
        settings={},
        poll_events=1,
        results=[
            _result("lstmd", [0.9, 1.5]),
            _result("naive", [1.2, 2.0]),
            _result("snarimax_seasonal", [1.0, 1.1]),
        ],
    )
    assert report.best_baseline().name == "snarimax_seasonal"
    assert report.headline() == (
        "lstmd MAE 0.9 is 10.0% better than the best baseline, snarimax_seasonal model, MAE 1"
    )
    text = render_markdown(report)
    assert "| lstmd model | 0.9 | 1.5 |" in text and "| h=1 | h=2 |" in text


def test_plots_are_written_small(tmp_path):
    pytest.importorskip("matplotlib")
    from daemon.evaluation.baselines import NaiveLast, prequential_forecasts
    from daemon.evaluation.plots import write_plots
    from daemon.evaluation.scoring import error_summary, pair_errors, scored_pairs
    from daemon.evaluation.stream import Stream

    keys = [k for _ in range(40) for k in ("a", "b", "c", "d")]
    values = np.array([10.0 * (1 + "abcd".index(k)) + i % 7 for i, k in enumerate(keys)])
    stream = Stream(keys, np.arange(len(keys)) * 86_400.0, values, [np.array([v]) for v in values])
    forecasts = {"naive": prequential_forecasts(NaiveLast(), keys, values)}
    pairs = scored_pairs(keys)
    errors = pair_errors(forecasts["naive"], values, pairs)
    result = ModelResult("naive", "naive (last value)", error_summary(errors), {}, 1.0, 1.0)
    files = write_plots(tmp_path, stream, pairs, forecasts, [result])
    for name in files.values():
        size = (tmp_path / name).stat().st_size
        assert 1_000 < size < 200_000


def test_the_median_keys_mae_is_not_swayed_by_one_diverged_key():
    per_key = {"a": Errors(1.0, 1.0, 5), "b": Errors(3.0, 3.0, 5), "c": Errors(1e9, 1e9, 5)}
    result = ModelResult("snarimax", "snarimax", Errors(3e8, 5e8, 15), per_key, 1.0, 1.0)
    assert result.median_key_mae() == 3.0


def test_a_csv_is_scored_against_every_anchor_with_mase_and_intervals(tmp_path):
    pytest.importorskip("statsforecast")
    pytest.importorskip("lightgbm")
    path = tmp_path / "shops.csv"
    lines = ["shop,date,sales,visitors"]
    noise = np.random.default_rng(0).normal(0, 1, (150, 2))
    for day in range(150):
        date = np.datetime64("2024-01-01") + day
        for i, (shop, level) in enumerate((("north", 100.0), ("south", 40.0))):
            sales = level + 10 * np.sin(2 * np.pi * day / 7) + day * 0.1 + noise[day, i]
            lines.append(f"{shop},{date},{sales:.3f},{day % 13}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_csv_dataset(path, "shop", "date", ("sales", "visitors"))
    report = run_evaluation(
        Settings(model=ModelSettings(batch_size=2, window=4)),
        data,
        out_dir=tmp_path / "out",
        models=["lstmd", "seasonal_naive", "autoets", "autoets_calibrated", "lightgbm"],
        plots=False,
        out=io.StringIO(),
        model_factory=_toy,
    )
    assert report.season == 7
    names = [r.name for r in report.results]
    assert names == ["lstmd", "seasonal_naive", "autoets", "autoets_calibrated", "lightgbm"]
    own, calibrated = report.result("autoets"), report.result("autoets_calibrated")
    assert own.overall == calibrated.overall  # one fit, two calibrations
    assert own.coverage != calibrated.coverage
    assert report.result("seasonal_naive").mase == pytest.approx(1.0)
    # A weekly pattern with a trend and noise: AutoETS beats seasonal naive.
    assert report.result("autoets").mase < 1
    assert report.result("lightgbm").extra["refits"] > 0
    for name in ("lstmd", "autoets", "autoets_calibrated", "lightgbm"):
        result = report.result(name)
        assert set(result.coverage) == {0.8, 0.95}
        assert 0 < result.coverage[0.8] <= result.coverage[0.95] <= 1
        assert result.interval_score[0.95] > 0
    assert report.result("seasonal_naive").coverage == {}
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Prediction intervals" in markdown and "AutoETS(season_length=7" in markdown
    assert "intervals: lstmd's online calibration" in markdown  # LightGBM's
