"""Soak: a steady stream for N minutes on the embedded broker, the daemon SIGKILLed and restarted
every few minutes; prints events in and out, dead letters, restarts and RSS over time.

Run: .venv/bin/python bench/soak.py [--minutes 30] [--rate 300] [--kill-every 240] [--keys 200]
Exits 0 when every input offset got a prediction or a dead letter and RSS stayed flat once warm
(last sample within 25% of the first sample after the warm-up), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.edges.embedded import EmbeddedBroker
from daemon.edges.kafka_io import client_options, ensure_topics, produce_values, read_all
from daemon.settings import KafkaSettings

TOPICS = ("soak-in", "soak-pred", "soak-dlq", "soak-metrics")
BAD = [b"{not json", b'{"key": "x", "ts": 1, "features": [1]}', b'{"ts": 1, "features": [1, 2]}']


def rss_mb(pid: int) -> float | None:
    """Return a process's resident set size in MB, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Producer(threading.Thread):
    """Send `rate` events per second (about 0.5% malformed) until stopped."""

    def __init__(self, options: dict, rate: int, keys: int) -> None:
        super().__init__(daemon=True)
        self.options, self.rate, self.keys = options, rate, keys
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(1)
        tick = 0
        while not self.stop.is_set():
            started = time.monotonic()
            batch = []
            for _ in range(self.rate // 10):
                key = f"k{rng.randrange(self.keys)}"
                if rng.random() < 0.005:
                    batch.append((None, rng.choice(BAD)))
                    continue
                value = {"key": key, "ts": 1e9 + tick, "features": [rng.gauss(10, 2), tick % 7]}
                batch.append((key.encode(), json.dumps(value).encode()))
                tick += 1
            self.sent += produce_values(self.options, TOPICS[0], batch)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", "run"], env=env, stdout=handle, stderr=handle
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=300, help="events per second")
    parser.add_argument("--kill-every", type=float, default=240, help="seconds between SIGKILLs")
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--sample-every", type=float, default=15, help="seconds between samples")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lstmd-soak-"))
    with EmbeddedBroker() as broker:
        options = client_options(KafkaSettings(), broker.bootstrap)
        ensure_topics(options, list(TOPICS))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMD_")}
        env.update(
            LSTMD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
            LSTMD_KAFKA__INPUT_TOPIC=TOPICS[0],
            LSTMD_KAFKA__PREDICTIONS_TOPIC=TOPICS[1],
            LSTMD_KAFKA__DEAD_LETTER_TOPIC=TOPICS[2],
            LSTMD_KAFKA__METRICS_TOPIC=TOPICS[3],
            LSTMD_MODEL__N_FEATURES="2",
            LSTMD_SNAPSHOT__DIRECTORY=str(work / "snapshots"),
            LSTMD_SNAPSHOT__EVERY_S="10",
            LSTMD_STREAM__MAX_PARKED_KEYS=str(args.keys),
            LSTMD_METRICS__PORT="0",
        )
        producer = Producer(options, args.rate, args.keys)
        daemon = start_daemon(env, work / "daemon.log")
        producer.start()
        started = last_kill = last_sample = time.monotonic()
        restarts, samples = 0, []
        print(
            f"soak: {args.minutes:g} min at {args.rate}/s, {args.keys} keys, SIGKILL every "
            f"{args.kill_every:g} s; logs in {work}"
        )
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(1)
            now = time.monotonic()
            if now - last_sample >= args.sample_every:
                last_sample = now
                rss = rss_mb(daemon.pid)
                samples.append((now - started, rss))
                print(
                    f"  t={now - started:6.0f}s  sent={producer.sent:8,}  rss={rss or 0:7.1f} MB"
                    f"  restarts={restarts}",
                    flush=True,
                )
            if now - last_kill >= args.kill_every:
                last_kill = now
                daemon.kill()
                daemon.wait()
                restarts += 1
                daemon = start_daemon(env, work / "daemon.log")
        producer.stop.set()
        producer.join()
        sent = producer.sent
        deadline = time.monotonic() + 300
        predicted: set[int] = set()
        dead: set[int] = set()
        while time.monotonic() < deadline:
            predicted = {json.loads(r.value)["source_offset"] for r in read_all(options, TOPICS[1])}
            dead = {
                int(dict(r.headers)["lstmd-source-offset"]) for r in read_all(options, TOPICS[2])
            }
            if len(predicted | dead) >= sent:
                break
            time.sleep(5)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=120)
        prediction_messages = len(read_all(options, TOPICS[1]))
    answered = predicted | dead
    warm = [rss for t, rss in samples if rss and t >= min(300, args.minutes * 30)]
    flat = bool(warm) and warm[-1] <= 1.25 * warm[0]
    print("\nsoak summary")
    print(f"  events in              {sent:,}")
    print(
        f"  prediction messages    {prediction_messages:,} ({len(predicted):,} distinct offsets;"
        " the rest are replays after kills)"
    )
    print(f"  dead-lettered          {len(dead):,}")
    print(f"  unanswered offsets     {sent - len(answered & set(range(sent))):,}")
    print(f"  restarts (SIGKILL)     {restarts}")
    print(f"  final SIGTERM exit     {code}")
    if warm:
        print(
            f"  RSS once warm          {warm[0]:.0f} -> {warm[-1]:.0f} MB "
            f"({'flat' if flat else 'GROWING'})"
        )
    ok = answered >= set(range(sent)) and code == 0 and flat
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
