"""Event-to-prediction latency at 10% of lstmd's max throughput, on the embedded broker.

Run: .venv/bin/python bench/latency.py [--seconds 20] [--keys 20] [--fraction 0.1]

1. Max rate: an in-process daemon (B=32, T=16, 32 units, F=2, `--keys` keys, forecast events,
   default `max_batch_wait_ms`=500) drains a backlog of `--backlog` events, timed from the first
   poll after the group join to the last prediction acknowledged.
2. For forecast events, then supervised events (with `target`): a fresh in-process daemon, and a
   load child process (kafka-python only, no TensorFlow, so it does not share the daemon's GIL)
   that produces at `--fraction` x the max rate, steadily, and consumes the predictions topic
   (fetch_max_wait_ms=5). Latency is from the producer's send time (wall clock, recorded per
   (key, ts) just before `send`) to (a) the prediction's arrival at that consumer (an upper
   bound of "acknowledged": the broker had it) and (b) the prediction record's CreateTime (when
   lstmd's producer queued it).

Forecasts are published at the end of each poll; supervised predictions wait for the train step
that consumes them (a row reaching T, or the batch closing `max_batch_wait_ms` after its first
event, checked at the end of each poll). Target: p99 <= max_batch_wait_ms + 2 train steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

N_FEATURES = 2
QUANTILES = ("0.5", "0.9", "0.99", "1.0")


def pct(values: list[float], q: str) -> float:
    """Return the q-quantile of sorted seconds, in ms."""
    if not values:
        return float("nan")
    return 1000 * values[min(len(values) - 1, int(float(q) * len(values)))]


def event_bytes(key: int, i: int, supervised: bool) -> tuple[bytes, float]:
    ts = 1_700_000_000.0 + i
    x = math.sin(i / 10 + key)
    event = {"key": f"k{key}", "ts": ts, "features": [x, math.cos(i / 7)]}
    if supervised:
        event["target"] = [math.sin((i + 1) / 10 + key)]
    return json.dumps(event).encode(), ts


# ---------------------------------------------------------------------------------------------
# load child: steady producer + predictions consumer (no TensorFlow)
# ---------------------------------------------------------------------------------------------


def load_child(args) -> dict:
    import faulthandler

    faulthandler.dump_traceback_later(args.seconds + 60, exit=True)  # never hang the bench
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    options = {"bootstrap_servers": [args.bootstrap], "client_id": "latency-load"}
    producer = KafkaProducer(**options, acks="all", linger_ms=0)
    consumer = KafkaConsumer(
        **options, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    consumer.assign([TopicPartition(args.pred_topic, 0)])
    consumer.seek_to_beginning()
    total = int(args.rate * args.seconds)
    supervised = args.mode == "supervised"
    sent: dict[tuple[str, float], float] = {}
    arrived: dict[tuple[str, float], tuple[float, float]] = {}
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=20).values():
                now = time.time()
                for record in records:
                    p = json.loads(record.value)
                    arrived[(p["key"], p["ts"])] = (now, record.timestamp / 1000)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    time.sleep(1.0)  # the reader is positioned
    started = time.time()
    for i in range(total):
        due = started + i / args.rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        key = i % args.keys
        value, ts = event_bytes(key, i // args.keys, supervised)
        sent[(f"k{key}", ts)] = time.time()
        producer.send(args.topic, key=f"k{key}".encode(), value=value)
    producer.flush()
    send_span = time.time() - started
    # In forecast mode each key's newest event is answered by inference at the end of a poll; in
    # supervised mode the last batch closes max_batch_wait_ms later. Wait for all of them.
    deadline = time.time() + 20
    while len(arrived) < len(sent) and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join(timeout=5)
    to_arrival = sorted(arrived[k][0] - t for k, t in sent.items() if k in arrived)
    to_create = sorted(arrived[k][1] - t for k, t in sent.items() if k in arrived)
    producer.close()
    consumer.close()
    return {
        "sent": len(sent),
        "received": len(arrived),
        "achieved_rate": total / send_span,
        # Summaries only: the parent reads this pipe after the child exits (a 64 KiB pipe of
        # raw samples would block the child).
        "arrival": {q: pct(to_arrival, q) for q in QUANTILES},
        "create": {q: pct(to_create, q) for q in QUANTILES},
    }


# ---------------------------------------------------------------------------------------------
# parent: the in-process daemon
# ---------------------------------------------------------------------------------------------


def settings_for(bootstrap: str, directory: Path):
    from daemon.settings import (
        KafkaSettings,
        MetricsSettings,
        ModelSettings,
        Settings,
        SnapshotSettings,
        StreamSettings,
    )

    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            input_topic=f"lat-in-{tag}",
            predictions_topic=f"lat-pred-{tag}",
            dead_letter_topic=f"lat-dlq-{tag}",
            metrics_topic=f"lat-metrics-{tag}",
            group_id=f"lat-{tag}",
        ),
        model=ModelSettings(n_features=N_FEATURES, n_targets=1, target_index=(0,)),
        stream=StreamSettings(),  # max_batch_wait_ms=500 (default)
        metrics=MetricsSettings(host="127.0.0.1", port=0),
        snapshot=SnapshotSettings(directory=directory, every_steps=10**9, every_s=0),
    )


def joined_daemon(settings):
    from daemon.edges.kafka_io import client_options
    from daemon.service.app import build_daemon

    options = client_options(settings.kafka, settings.kafka.bootstrap_servers)
    daemon = build_daemon(settings, options, serve_http=False)
    deadline = time.monotonic() + 30
    while not daemon.runner._source.assignment() and time.monotonic() < deadline:
        daemon.runner._poll_once()
    step_times: list[float] = []
    original = daemon.model.train_step

    def timed(*a):
        started = time.perf_counter()
        try:
            return original(*a)
        finally:
            step_times.append(time.perf_counter() - started)

    daemon.learner._model = type(
        "Timed",
        (),
        {
            "state_shape": daemon.model.state_shape,
            "train_step": staticmethod(timed),
            "infer": staticmethod(daemon.model.infer),
        },
    )()
    return daemon, options, step_times


def max_rate(bootstrap: str, keys: int, backlog: int) -> float:
    from daemon.edges.kafka_io import produce_values

    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(bootstrap, Path(tmp))
        daemon, options, _ = joined_daemon(settings)
        messages = []
        for i in range(backlog):
            value, _ = event_bytes(i % keys, i // keys, supervised=False)
            messages.append((f"k{i % keys}".encode(), value))
        produce_values(options, settings.kafka.input_topic, messages)
        done = {}

        def until(r) -> bool:
            if r.predictions_sent < backlog:
                return False
            r._publisher.flush(60)
            done["t"] = time.perf_counter()
            return True

        started = time.perf_counter()
        daemon.runner.run(until=until)
        daemon.close()
        return backlog / (done["t"] - started)


def measure(bootstrap: str, variant: str, rate: float, args) -> dict:
    """One latency run; `variant` is a mode, optionally `@fetchN` (consumer fetch_max_wait_ms=N,
    monkeypatched into lstmd's EventSource; kafka-python's default is 500)."""
    import functools

    import daemon.edges.consumer

    mode, _, lever = variant.partition("@")
    original_consumer = daemon.edges.consumer.KafkaConsumer
    if lever.startswith("fetch"):
        daemon.edges.consumer.KafkaConsumer = functools.partial(
            original_consumer, fetch_max_wait_ms=int(lever[len("fetch") :])
        )
    try:
        return _measure(bootstrap, mode, rate, args)
    finally:
        daemon.edges.consumer.KafkaConsumer = original_consumer


def _measure(bootstrap: str, mode: str, rate: float, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(bootstrap, Path(tmp))
        daemon, _, step_times = joined_daemon(settings)
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--load",
                "--bootstrap",
                bootstrap,
                "--topic",
                settings.kafka.input_topic,
                "--pred-topic",
                settings.kafka.predictions_topic,
                "--rate",
                str(rate),
                "--seconds",
                str(args.seconds),
                "--mode",
                mode,
                "--keys",
                str(args.keys),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        daemon.runner.run(until=lambda r: child.poll() is not None)
        out = child.stdout.read()
        daemon.close()
    line = next((s for s in out.splitlines() if s.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"load child failed: {out[-2000:]}")
    result = json.loads(line[len("RESULT ") :])
    result["step_ms"] = 1000 * sorted(step_times)[len(step_times) // 2] if step_times else 0.0
    result["steps"] = len(step_times)
    result["wait_ms"] = settings.stream.max_batch_wait_ms
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--backlog", type=int, default=8000)
    parser.add_argument(
        "--modes", default="forecast,supervised,forecast@fetch50,supervised@fetch50"
    )
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--pred-topic", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print("RESULT " + json.dumps(load_child(args)), flush=True)
        return 0

    from daemon.edges.embedded import EmbeddedBroker

    with EmbeddedBroker(port=0) as broker:
        peak = max_rate(broker.bootstrap, args.keys, args.backlog)
        rate = args.fraction * peak
        print(
            f"max throughput: {peak:,.0f} events/s ({args.backlog:,} forecast events, "
            f"{args.keys} keys); load at {args.fraction:g}x = {rate:,.0f} events/s "
            f"for {args.seconds:g} s"
        )
        results = {
            mode: measure(broker.bootstrap, mode, rate, args) for mode in args.modes.split(",")
        }
    print(
        f"{'mode':19s} {'sent':>6s} {'recv':>6s} {'rate':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'max ms':>8s} {'p50 ct':>7s} {'p99 ct':>7s} {'step ms':>7s}  target p99 <= wait+2 steps"
    )
    for mode, r in results.items():
        arrival, create = r["arrival"], r["create"]
        limit = r["wait_ms"] + 2 * r["step_ms"]
        p99 = arrival["0.99"]
        verdict = "met" if p99 <= limit else "MISSED"
        print(
            f"{mode:19s} {r['sent']:6d} {r['received']:6d} {r['achieved_rate']:6.0f} "
            f"{arrival['0.5']:8.1f} {p99:8.1f} {arrival['1.0']:8.1f} "
            f"{create['0.5']:7.1f} {create['0.99']:7.1f} {r['step_ms']:7.2f}  "
            f"{limit:.0f} ms: {verdict}"
        )
    print(
        "(ms from the producer's send; 'ct' = to the prediction record's CreateTime, i.e. "
        "queued by lstmd; others = arrival at a consumer of the predictions topic; step ms = "
        "median train step; @fetch50 = lstmd's consumer with fetch_max_wait_ms=50 instead of "
        "kafka-python's 500)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
