"""`lstmd demo`: embedded broker, a real data set replayed, the daemon on it, and a summary.

The summary counts what is really on the broker (predictions and dead letters are read back from
their topics), so it checks the daemon end to end rather than trusting its own counters.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from daemon.edges.kafka_io import ensure_topics, produce_values, read_all
from daemon.service.app import build_daemon, kafka_connection
from daemon.service.runner import Runner
from daemon.settings import Settings
from daemon.tools.datasets import inject_bad_events, load_birthdays
from daemon.tools.progress import Progress

log = logging.getLogger("lstmd.demo")

# Reading back a topic of ~10^5 messages takes a few seconds; give it room.
READ_BACK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did and how well the model forecast, against the naive last value."""

    events_in: int
    predictions_out: int
    dead_lettered: int
    train_steps: int
    resets: int
    keys: int
    rows_per_step: float
    batch_size: int
    model_mae: float
    naive_mae: float
    elapsed_s: float


def demo_settings(
    settings: Settings, n_features: int, target_index: tuple[int, ...], snapshot_dir: Path
) -> Settings:
    """Fit the model shape to the data set; embedded broker, free HTTP port, scratch snapshots.

    The wall-clock batch close is off: the demo replays a backlog, and without it a run is
    deterministic for a given seed.
    """
    model = settings.model.model_copy(
        update={
            "n_features": n_features,
            "n_targets": len(target_index),
            "target_index": target_index,
        }
    )
    stream = settings.stream.model_copy(update={"max_batch_wait_ms": 0})
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": ""})
    metrics = settings.metrics.model_copy(update={"port": 0, "host": "127.0.0.1"})
    snapshot = settings.snapshot.model_copy(update={"directory": snapshot_dir})
    return settings.model_copy(
        update={
            "model": model,
            "stream": stream,
            "kafka": kafka,
            "metrics": metrics,
            "snapshot": snapshot,
        }
    )


def run_demo(
    settings: Settings,
    events: int | None,
    bad_events: int,
    summary_json: Path | None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the whole demo; return 0 when every good event got exactly one prediction."""
    started = time.monotonic()
    clean = None if events is None else max(events - bad_events, 1)
    dataset = load_birthdays(limit=clean)
    messages, _ = inject_bad_events(dataset.messages, bad_events)
    scratch = tempfile.TemporaryDirectory(prefix="lstmd-demo-")
    settings = demo_settings(
        settings, dataset.n_features(), dataset.target_index, Path(scratch.name)
    )
    print(
        f"lstmd demo: {dataset.name}, {len(dataset.keys)} keys, batches of "
        f"{settings.model.batch_size} keys, {len(messages):,} events "
        f"({bad_events} deliberately bad)",
        file=out,
    )
    with scratch, kafka_connection(settings, embedded_port=0) as options:
        _replay(options, settings.kafka.input_topic, messages)
        daemon = build_daemon(settings, options)
        try:
            _train(daemon.runner, daemon.learner, len(messages))
        finally:
            daemon.close()
        summary = _summarise(options, settings, daemon, len(messages), started)
    _report(summary, daemon.runner, out)
    if summary_json is not None:
        summary_json.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return 0 if summary.predictions_out == summary.events_in - summary.dead_lettered else 1


def _replay(options: dict, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    ensure_topics(options, [topic])
    progress = Progress(len(messages), "replay")
    # produce_values raises when any record fails, so the count it returns is the whole list;
    # its progress calls come every 1000 records, so the last few arrive only here.
    progress.update(produce_values(options, topic, messages, on_progress=progress.update))
    progress.close()


def _train(runner: Runner, learner, total: int) -> None:
    progress = Progress(total, "train")

    def on_poll(r: Runner) -> None:
        progress.update(r.consumed, steps=learner.step)

    runner.run(until=lambda r: r.consumed >= total, on_poll=on_poll)
    progress.close(steps=learner.step)


def _summarise(options: dict, settings: Settings, daemon, events_in: int, started: float):
    kafka = settings.kafka
    predictions = read_all(options, kafka.predictions_topic, timeout_s=READ_BACK_TIMEOUT_S)
    dead = read_all(options, kafka.dead_letter_topic, timeout_s=READ_BACK_TIMEOUT_S)
    learner = daemon.learner
    return DemoSummary(
        events_in=events_in,
        predictions_out=len(predictions),
        dead_lettered=len(dead),
        train_steps=learner.step,
        resets=sum(learner.resets.values()),
        keys=learner.keys_in_store(),
        rows_per_step=round(learner.mean_rows_filled(), 1),
        batch_size=settings.model.batch_size,
        model_mae=round(learner.prequential.model_mae, 4),
        naive_mae=round(learner.prequential.naive_mae, 4),
        elapsed_s=round(time.monotonic() - started, 2),
    )


def _report(summary: DemoSummary, runner: Runner, out: TextIO) -> None:
    gain = 100.0 * (1.0 - summary.model_mae / summary.naive_mae) if summary.naive_mae else 0.0
    verdict = f"lstmd {gain:.1f}% better" if gain >= 0 else f"lstmd {-gain:.1f}% worse"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(runner.rejected.items())) or "none"
    lines = [
        "",
        "lstmd demo summary",
        f"  events in          {summary.events_in:>10,}",
        f"  predictions out    {summary.predictions_out:>10,}",
        f"  dead-lettered      {summary.dead_lettered:>10,}   ({reasons})",
        f"  train steps        {summary.train_steps:>10,}",
        f"  state resets       {summary.resets:>10,}",
        f"  keys in store      {summary.keys:>10,}",
        f"  keys per step      {summary.rows_per_step:>10.1f}   of {summary.batch_size} rows",
        f"  prequential MAE    {summary.model_mae:>10.3f}   lstmd",
        f"                     {summary.naive_mae:>10.3f}   naive last value ({verdict})",
        f"  elapsed            {summary.elapsed_s:>9.1f}s",
    ]
    ok = summary.predictions_out == summary.events_in - summary.dead_lettered
    lines.append(
        "  check              every good event got exactly one prediction"
        if ok
        else "  check              FAILED: predictions_out != events_in - dead_lettered"
    )
    print("\n".join(lines), file=out)
