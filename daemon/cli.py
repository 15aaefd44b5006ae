"""Command line: `lstmd run | demo | produce | check-config | evaluate | snapshots | export`.

Exit codes: 0 success, 1 runtime failure, 2 usage or settings error (one line naming it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from daemon import __version__
from daemon.service.logs import configure_logging
from daemon.settings import Settings, SettingsError, load_settings, masked_dump

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("lstmd")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmd",
        description="Streaming online-learning daemon: Kafka events in, keyed stateful LSTM "
        "training, one prediction per event out.",
        epilog="Settings come from LSTMD_* environment variables (LSTMD_MODEL__UNITS=64) and an "
        "optional TOML file (--config or LSTMD_CONFIG); `lstmd check-config` shows them.",
    )
    parser.add_argument("--version", action="version", version=f"lstmd {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $LSTMD_CONFIG)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", choices=["json", "text"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "run",
        help="run the daemon (embedded broker when no bootstrap servers are set)",
        description="Consume the input topic, train, publish predictions, until SIGTERM/SIGINT.",
    )

    demo = commands.add_parser(
        "demo",
        help="replay a real data set through the daemon on an embedded broker",
        description="Start an embedded broker, replay mosaicData Birthdays (51 US states, daily "
        "births 1969-1988) into the input topic, run the daemon on it and print a summary.",
    )
    demo.add_argument("--events", type=_positive, help="replay only the first N events")
    demo.add_argument(
        "--bad-events",
        type=_non_negative,
        default=12,
        help="deliberately malformed events mixed in, to show the dead-letter topic (default 12)",
    )
    demo.add_argument("--summary-json", type=Path, help="also write the summary as JSON here")

    produce = commands.add_parser(
        "produce",
        help="replay a CSV file into the input topic as events, in time order",
        description="Replay a CSV file into the input topic. Without bootstrap servers it "
        "sends to the embedded broker of a running `lstmd run` (127.0.0.1:embedded_port).",
    )
    produce.add_argument("--csv", type=Path, required=True, help="the CSV file (with a header)")
    produce.add_argument("--key", required=True, help="column holding the stream key")
    produce.add_argument("--ts", required=True, help="column holding the event time")
    produce.add_argument(
        "--features", required=True, type=_columns, help="comma-separated feature columns"
    )
    produce.add_argument(
        "--target", type=_columns, default=(), help="comma-separated target columns (supervised)"
    )
    produce.add_argument("--topic", help="topic to send to (default: kafka.input_topic)")

    commands.add_parser("check-config", help="print the effective settings, secrets masked")

    evaluate = commands.add_parser(
        "evaluate",
        help="prequential forecast quality against baselines, on a built-in data set or a CSV",
        description="Replay a data set through the learner (no Kafka) and score it, "
        "prequentially, against naive, seasonal naive, River SNARIMAX (plain and seasonal) and "
        "the anchors a data scientist would deploy (statsforecast AutoETS per key, a global "
        "LightGBM), all refit on a schedule, on the same events, with MASE and the coverage "
        "and interval score of every model's intervals. Built-in sets: birthdays, elecdemand, "
        "us_employment, nyc_weather, m3_monthly, chicago, or `all` (writes reports/ and "
        "reports/summary.md); or any CSV file with --csv --key --ts --features. Needs the "
        "`eval` extra (pip install 'lstmd[eval]').",
    )
    evaluate.add_argument(
        "--dataset", default="birthdays", help="a built-in data set, or all (default birthdays)"
    )
    evaluate.add_argument("--csv", type=Path, help="evaluate this CSV file instead (with a header)")
    evaluate.add_argument("--key", help="--csv: column holding the stream key")
    evaluate.add_argument("--ts", help="--csv: column holding epoch seconds or RFC 3339 times")
    evaluate.add_argument("--features", type=_columns, help="--csv: comma-separated features")
    evaluate.add_argument("--target", help="--csv: the column to forecast (default: 1st feature)")
    evaluate.add_argument("--events", type=_positive, help="only the first N events")
    evaluate.add_argument(
        "--out", type=Path, help="report directory (default: reports/DATASET or reports/CSV-NAME)"
    )
    evaluate.add_argument(
        "--season", type=_positive, help="season m in events (default: the data's or detected)"
    )
    evaluate.add_argument(
        "--models",
        type=_columns,
        help="comma-separated subset of lstmd, lstmd_handbuilt, lstmd_stateless, naive, "
        "seasonal_naive, snarimax, snarimax_seasonal, snarimax_seasonal_clipped, autoets, "
        "autoets_calibrated, lightgbm "
        "(default: all but lstmd_stateless)",
    )
    evaluate.add_argument("--snarimax-lr", type=float, default=0.001)
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG figures")

    snapshots = commands.add_parser(
        "snapshots", help="inspect snapshots", description="Inspect the snapshot directory."
    )
    snapshot_commands = snapshots.add_subparsers(dest="snapshots_command", required=True)
    listing = snapshot_commands.add_parser(
        "list", help="show step, time, offsets, size and validity of each snapshot"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per snapshot")

    export = commands.add_parser(
        "export",
        help="write a snapshot's model as a plain Keras model file",
        description="Write the model of a snapshot as a .keras file that keras.saving.load_model "
        "loads. Its inputs are [x, mask, h_1, c_1, ...]; its outputs [predictions, h_1, c_1, ...].",
    )
    export.add_argument("--snapshot", default="latest", help="snapshot id (default: newest valid)")
    export.add_argument("out", type=Path, help="output file, ending in .keras")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _columns(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    if not columns:
        raise argparse.ArgumentTypeError("name at least one column")
    return columns


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.edges.kafka_io import client_options, ensure_topics, produce_values
    from daemon.tools.progress import Progress
    from daemon.tools.replay import csv_messages

    try:
        messages = csv_messages(args.csv, args.key, args.ts, args.features, args.target)
    except (ValueError, OSError) as exc:
        print(f"lstmd produce: {exc}", file=sys.stderr)
        return EXIT_USAGE
    kafka = settings.kafka
    bootstrap = kafka.bootstrap_servers or f"127.0.0.1:{kafka.embedded_port}"
    options = client_options(kafka, bootstrap)
    topic = args.topic or kafka.input_topic
    ensure_topics(options, [topic], replication_factor=kafka.replication_factor)
    progress = Progress(len(messages), f"produce {args.csv.name}")
    count = produce_values(options, topic, messages, on_progress=progress.update)
    progress.update(count)  # progress calls come every 1000 records; the rest arrive here
    progress.close()
    print(f"sent {count:,} events to {topic} at {bootstrap}")
    return EXIT_OK


def _list_snapshots(settings: Settings, as_json: bool) -> int:
    from daemon.persist.checkpointing import describe
    from daemon.persist.snapshots import SnapshotStore

    rows = [describe(info) for info in SnapshotStore(settings.snapshot.directory, 1).list()]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    if not rows:
        print(f"no snapshots in {settings.snapshot.directory}")
        return EXIT_OK
    print(f"{'snapshot':34} {'step':>8} {'created (UTC)':20} {'bytes':>11}  offsets  valid")
    for row in rows:
        offsets = ",".join(f"{p}:{o}" for p, o in sorted(row["offsets"].items())) or "-"
        valid = "yes" if row["valid"] else f"NO: {row['problem']}"
        print(
            f"{row['id']:34} {row['step']:>8} {row['created'] or '-':20} {row['bytes']:>11,}  "
            f"{offsets}  {valid}"
        )
    return EXIT_OK


def _export(settings: Settings, snapshot_id: str, out: Path) -> int:
    from daemon.model.export import ExportError, export_snapshot

    try:
        written = export_snapshot(settings.snapshot.directory, snapshot_id, out)
    except ExportError as exc:
        print(f"lstmd export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out} from {written}")
    return EXIT_OK


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.evaluation.datasets import LOADERS, load_csv_dataset
    from daemon.evaluation.evaluate import DEFAULT_MODELS, run_evaluation, summary_markdown

    options = {
        "limit": args.events,
        "season": args.season,
        "models": list(args.models or DEFAULT_MODELS),
        "snarimax_lr": args.snarimax_lr,
        "plots": not args.no_plots,
    }
    try:
        if args.csv is not None:
            missing = [f"--{n}" for n in ("key", "ts", "features") if not getattr(args, n)]
            if missing:
                raise ValueError(f"--csv needs {', '.join(missing)}")
            data = load_csv_dataset(
                args.csv, args.key, args.ts, args.features, args.target, args.events
            )
            out = args.out or Path("reports") / args.csv.stem
            run_evaluation(settings, data, out_dir=out, **{**options, "limit": None})
        elif args.dataset == "all":
            out = args.out or Path("reports")
            reports = [
                run_evaluation(settings, name, out_dir=out / name, **options) for name in LOADERS
            ]
            (out / "summary.md").write_text(summary_markdown(reports), encoding="utf-8")
            print(f"summary written to {out / 'summary.md'}")
        else:
            out = args.out or Path("reports") / args.dataset
            run_evaluation(settings, args.dataset, out_dir=out, **options)
    except (ValueError, ImportError, OSError) as exc:
        print(f"lstmd evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dataset != "all" or args.csv is not None:
        print(f"report written to {out / 'report.md'}")
    return EXIT_OK


def _dispatch(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "evaluate":
        return _evaluate(settings, args)
    if args.command == "snapshots":
        return _list_snapshots(settings, args.json)
    if args.command == "export":
        return _export(settings, args.snapshot, args.out)
    if args.command == "check-config":
        print(json.dumps(masked_dump(settings), indent=2))
        return EXIT_OK
    if args.command == "run":
        from daemon.service.app import StartupError, run_daemon

        try:
            return run_daemon(settings)
        except StartupError as exc:
            print(f"lstmd: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "demo":
        from daemon.tools.demo import run_demo

        return run_demo(settings, args.events, args.bad_events, args.summary_json)
    return _produce(settings, args)


def main(argv: list[str] | None = None) -> int:
    """Run the `lstmd` command; return its exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"lstmd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    fmt = args.log_format or settings.log.format
    if args.command == "demo" and not args.log_format:
        fmt = "text"  # the demo is watched by a person
    configure_logging(args.log_level or settings.log.level, fmt)
    try:
        return _dispatch(settings, args)
    except KeyboardInterrupt:
        return 130
    except Exception:
        log.exception("lstmd failed")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
