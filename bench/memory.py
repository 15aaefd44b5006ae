"""Memory with many keys: RSS while 1,000,000 distinct keys stream through the learner.

Run: .venv/bin/python bench/memory.py [--keys 1000000] [--max-parked 100000] [--every 100000]

In-process, no broker: `OnlineLearner` + `StatefulLSTM` (B=32, T=16, 32 units, F=2, forecast
mode), fed `Event`s directly the way the runner does: `ingest` per event, then `end_of_poll` and
`take_outbox` every `--poll` events (predictions are dropped, as if published). Every key gets
one event; every other key a second one 40 keys later (after it was parked, so it comes back
from the parked store). RSS (VmRSS of /proc/self/status) is printed every `--every` events; with
`stream.max_keys` reached it must stay flat.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.model.lstm import build_model
from daemon.settings import ModelSettings, Settings, StreamSettings

SECOND_EVENT_LAG = 40  # keys between a key's first and second event (> 32 slots: it is parked)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def events(n_keys: int, n_features: int):
    """Yield (new key?, event): key i's first event, and key i-40's second one for even i-40."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4096, n_features))
    for i in range(n_keys + SECOND_EVENT_LAG):
        if i < n_keys:
            yield True, Event(f"k{i}", float(i), noise[i % 4096].copy(), None)
        j = i - SECOND_EVENT_LAG
        if j >= 0 and j % 2 == 0:
            yield False, Event(f"k{j}", float(i), noise[(j + 7) % 4096].copy(), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--max-parked", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=100_000, help="print RSS every N events")
    parser.add_argument("--poll", type=int, default=2000, help="events per simulated poll")
    args = parser.parse_args()
    n_features = 2
    settings = Settings(
        model=ModelSettings(n_features=n_features, units=32, batch_size=32, window=16),
        stream=StreamSettings(max_keys=args.max_parked, max_batch_wait_ms=0),
    )
    model = build_model(settings)
    learner = OnlineLearner(settings, model)
    gc.collect()
    start_mb = rss_mb()
    print(f"model built, RSS {start_mb:.0f} MB; {args.keys:,} keys, cap {args.max_parked:,}")
    print(f"{'events':>10s} {'keys':>9s} {'parked':>8s} {'RSS MB':>8s} {'dropped':>9s} {'s':>6s}")
    series: list[tuple[int, int, float]] = []
    at_cap_mb: float | None = None
    at_cap_events = 0
    started = time.perf_counter()
    count = 0
    keys_seen = 0
    for new_key, event in events(args.keys, n_features):
        learner.ingest(event, 0, count)
        count += 1
        keys_seen += new_key
        if count % args.poll == 0:
            learner.end_of_poll()
            learner.take_outbox()
        if at_cap_mb is None and len(learner.table.parked) >= args.max_parked:
            learner.end_of_poll()
            learner.take_outbox()
            at_cap_mb, at_cap_events = rss_mb(), count
        if count % args.every == 0:
            mb = rss_mb()
            series.append((count, len(learner.table.parked), mb))
            print(
                f"{count:10,d} {keys_seen:9,d} {len(learner.table.parked):8,d} {mb:8.0f} "
                f"{learner.table.parked_dropped:9,d} {time.perf_counter() - started:6.0f}",
                flush=True,
            )
    learner.end_of_poll()
    learner.take_outbox()
    end_mb = rss_mb()
    print(f"end: {count:,} events, RSS {end_mb:.0f} MB, {learner.table.parked_dropped:,} dropped")
    if at_cap_mb is not None:
        per_key = (at_cap_mb - start_mb) * 1024 * 1024 / args.max_parked
        after = [mb for events_done, _, mb in series if events_done > at_cap_events]
        growth = (max(after) - at_cap_mb) if after else 0.0
        print(
            f"cap reached after {at_cap_events:,} events at RSS {at_cap_mb:.0f} MB: "
            f"~{per_key:,.0f} bytes per parked key (RSS growth from start / cap)"
        )
        print(
            f"after the cap: RSS max {max(after, default=at_cap_mb):.0f} MB, "
            f"growth {growth:+.0f} MB over {count - at_cap_events:,} more events "
            f"({'flat' if growth < 0.05 * at_cap_mb else 'NOT flat'}: < 5% of RSS at the cap)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
