"""Snapshot write and restore time of a key-state store of 100,000 keys (goal < 1 s each).

Run: .venv/bin/python bench/snapshot_bench.py [--keys 100000] [--repeat 3]
Fills one partition's store through the real ingest path (two events per key, forecast mode,
default derived features), so each key holds its state, statistics, derived-feature history and
pending events as in a running daemon, then times `Checkpointer.save` and
`Checkpointer.restore` into a fresh learner with the real model.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from daemon.core.events import Event
from daemon.core.learner import OnlineLearner
from daemon.model.lstm import build_model
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.snapshots import SnapshotStore
from daemon.settings import ModelSettings, Settings, StreamSettings


def fill(learner: OnlineLearner, keys: int, n_features: int) -> None:
    """Give the store `keys` keys through the real ingest path: two events each, daily."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4096, n_features)) + 10.0
    for day in range(2):
        for k in range(keys):
            event = Event(f"key-{k}", 86_400.0 * day, noise[(k + day) % 4096].copy(), None)
            learner.ingest(event, 0, day * keys + k)
        learner.end_of_poll()
        learner.take_outbox()


def parts(settings: Settings, directory: Path) -> tuple[OnlineLearner, Checkpointer]:
    model = build_model(settings)
    learner = OnlineLearner(settings, model)
    return learner, Checkpointer(SnapshotStore(directory, keep=2), learner, model, settings.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = Settings(
        model=ModelSettings(n_features=2, units=16, batch_size=32),
        stream=StreamSettings(max_keys=args.keys, max_batch_wait_ms=0),
    )
    with tempfile.TemporaryDirectory() as tmp:
        learner, checkpointer = parts(settings, Path(tmp))
        fill(learner, args.keys, settings.model.n_features)
        writes, restores = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            info = checkpointer.save({0: 123})
            writes.append(time.perf_counter() - started)
            fresh, fresh_checkpointer = parts(settings, Path(tmp))
            started = time.perf_counter()
            fresh_checkpointer.restore()
            restores.append(time.perf_counter() - started)
            if fresh.keys_in_store() != args.keys:
                raise RuntimeError(f"restored {fresh.keys_in_store()} keys, not {args.keys}")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"keys: {args.keys:,} in one store ({learner.pending_events():,} pending events, "
            f"inputs {len(learner.input_names)}), snapshot {info.size_bytes / 1e6:.1f} MB"
        )
        print(f"write   : best {min(writes):.3f} s, median {np.median(writes):.3f} s")
        print(f"restore : best {min(restores):.3f} s, median {np.median(restores):.3f} s")
        print(f"peak RSS: {rss_mb:.0f} MB")
        print(
            f"goal < 1 s each: write {'met' if min(writes) < 1 else 'MISSED'}, "
            f"restore {'met' if min(restores) < 1 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
