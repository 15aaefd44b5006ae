"""Memory with many keys: RSS while 1,000,000 distinct keys stream through the learner.

Run: .venv/bin/python bench/memory.py [--keys 1000000] [--max-keys 1000000] [--units 16]
     [--no-derived] [--every 100000]

In-process, no broker: `OnlineLearner` + the real model (B=32, default T, `--units` units, one
layer, F=2, forecast mode), fed `Event`s directly the way the runner does: `ingest` per event,
then `end_of_poll` and `take_outbox` every `--poll` events (predictions are dropped, as if
published). Every key gets one event; every other key a second one 40 keys later. After every
poll the batch closes (as `max_batch_wait_ms` would, but deterministically): every trainable
event is trained on, so each key then sits idle in the store holding only its newest event
(answered, waiting for the successor that brings its target), as an idle key of a live stream
does. RSS (VmRSS of /proc/self/status) is printed every `--every` events. With `--max-keys` at
or above `--keys`, the end figure is the RSS per idle key, followed by a breakdown of the bytes
the learner's arrays and key map hold per key (rows in use; the rest is spare capacity and the
allocator's); with a smaller cap the RSS must stay flat once
reached.
"""

from __future__ import annotations

import argparse
import ctypes
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

SECOND_EVENT_LAG = 40  # keys between a key's first and second event


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def malloc_trim() -> float | None:
    """Return RSS MB after glibc returns the free heap it holds to the system (None: no glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_mb()


def end_poll(learner: OnlineLearner) -> None:
    """End a poll: answer forecasts, then train every trainable event (the batch closes)."""
    learner.end_of_poll()
    while learner.train():
        pass
    learner.take_outbox()


def _row_bytes(owner: object) -> int:
    """Return the bytes per row of the row-indexed numpy arrays an object holds."""
    names = getattr(owner, "__slots__", None) or vars(owner)
    values = [getattr(owner, name, None) for name in names]
    values += list(getattr(owner, "_arrays", {}).values())  # DerivedFeatures keeps a dict
    values += list(getattr(owner, "_by_mode", {}).values())  # the store's per-mode columns
    unique = {id(v): v for v in values if isinstance(v, np.ndarray) and len(v)}  # no aliases
    return sum(v.nbytes // len(v) for v in unique.values())


def breakdown(learner: OnlineLearner) -> dict[str, float]:
    """Return the bytes per key held of each part of the stores (used rows, not capacity)."""
    parts: dict[str, float] = {}

    def add(name: str, size: float) -> None:
        parts[name] = parts.get(name, 0.0) + size

    held = max(learner.keys_in_store(), 1)
    for store in learner.stores.values():
        share = len(store) / held
        add("store rows", _row_bytes(store) * share)
        for stats in (store.feature_stats, store.target_stats, store.step_stats):
            if getattr(stats, "allocated", True):
                add("statistics", _row_bytes(stats) * share)
        if store.derived is not None:
            add("derived features", _row_bytes(store.derived) * share)
        add("pending events", _row_bytes(store.events) * store.events.live / held)
        for free in (store._free_rows, store.events._free):
            add("free-id stacks", free._ids.nbytes / held)
        keys = store.row_of
        strings = sum(sys.getsizeof(k) for k in store.keys if k is not None)
        if isinstance(keys, dict):
            table = sys.getsizeof(keys) + sum(sys.getsizeof(r) for r in keys.values())
        else:
            table = keys._slots.buffer_info()[1] * keys._slots.itemsize + keys._added.nbytes
        add("key strings", strings / held)
        add("key table (+ row ints)", table / held)
        add("row -> key list", sys.getsizeof(store.keys) / held)
    return parts


def warm_up(settings: Settings, model) -> None:
    """Trace the model's train and inference steps on a throwaway learner: their one-off
    memory (graphs, buffers) must not count as the keys'."""
    learner = OnlineLearner(settings, model)
    for i, (_, event) in enumerate(events(200, 2)):
        learner.ingest(event, 0, i)
    end_poll(learner)


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
    parser.add_argument("--max-keys", type=int, default=1_000_000)
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--no-derived", action="store_true", help="no calendar or lag features")
    parser.add_argument("--every", type=int, default=100_000, help="print RSS every N events")
    parser.add_argument("--poll", type=int, default=2000, help="events per simulated poll")
    args = parser.parse_args()
    n_features = 2
    derived = {"seasons": (), "derived_calendar": False} if args.no_derived else {}
    settings = Settings(
        model=ModelSettings(n_features=n_features, units=args.units, layers=1, batch_size=32),
        stream=StreamSettings(max_keys=args.max_keys, max_batch_wait_ms=0, **derived),
    )
    model = build_model(settings)
    warm_up(settings, model)
    learner = OnlineLearner(settings, model)
    gc.collect()
    start_mb = rss_mb()
    print(
        f"model built and traced, RSS {start_mb:.0f} MB; {args.keys:,} keys, "
        f"cap {args.max_keys:,}, "
        f"{args.units} units, inputs {learner.input_names}"
    )
    print(f"{'events':>10s} {'keys':>9s} {'in store':>9s} {'RSS MB':>8s} {'dropped':>9s} {'s':>6s}")
    started = time.perf_counter()
    count = 0
    keys_seen = 0
    for new_key, event in events(args.keys, n_features):
        learner.ingest(event, 0, count)
        count += 1
        keys_seen += new_key
        if count % args.poll == 0:
            end_poll(learner)
        if count % args.every == 0:
            print(
                f"{count:10,d} {keys_seen:9,d} {learner.keys_in_store():9,d} {rss_mb():8.0f} "
                f"{learner.resets['dropped']:9,d} {time.perf_counter() - started:6.0f}",
                flush=True,
            )
    end_poll(learner)
    gc.collect()
    end_mb = rss_mb()
    held = learner.keys_in_store()
    print(
        f"end: {count:,} events, {held:,} keys held ({learner.pending_events():,} pending "
        f"events), RSS {end_mb:.0f} MB, {learner.resets['dropped']:,} dropped"
    )
    per_key = (end_mb - start_mb) * 1024 * 1024 / max(held, 1)
    print(f"RSS per key held: {per_key:,.0f} bytes; of which (bytes of the rows in use / keys):")
    parts = breakdown(learner)
    for name, size in parts.items():
        print(f"  {name:<28s} {size:8,.1f}")
    rest = per_key - sum(parts.values())
    print(f"  {'rest (spare rows, allocator)':<28s} {rest:8,.1f}")
    trimmed = malloc_trim()
    if trimmed is not None:
        print(
            f"after malloc_trim(0) (heap the allocator held free): RSS {trimmed:.0f} MB, "
            f"{(trimmed - start_mb) * 1024 * 1024 / max(held, 1):,.0f} bytes per key"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
