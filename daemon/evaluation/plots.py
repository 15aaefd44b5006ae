"""Figures of an evaluation: rolling MAE over time, and a few keys' forecasts against truth.

matplotlib comes with the `eval` extra and is imported only here, only when plots are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daemon.evaluation.report import ModelResult
from daemon.evaluation.scoring import Pairs, pair_errors, rolling_mae
from daemon.evaluation.stream import Stream

# Rolling window of the error-over-time plot, in scored pairs (Birthdays: ~100 days x 51 states).
DEFAULT_ROLLING_PAIRS = 5_000
# How many keys the forecasts-vs-truth figure shows, and how many of each key's last pairs.
PLOT_KEYS = 3
PLOT_POINTS = 60


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

    labels = {r.name: r.name for r in results}
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
            column = predicted if predicted.ndim == 1 else predicted[:, 0]
            ax.plot(when, column[pairs.source[chosen]], linewidth=1, label=labels[name])
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
