"""Snapshot write and restore time with 32 slots and 100,000 parked keys (issue: goal < 1 s each).

Run: .venv/bin/python bench/snapshot_bench.py [--parked 100000] [--repeat 3]
Builds a learner whose table holds 32 bound and N parked keys, each with normalisation statistics
and one buffered forecast event (the usual state of a key between events), then times
`Checkpointer.save` and `Checkpointer.restore` into a fresh learner with the real model.
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

from daemon.core.learner import OnlineLearner
from daemon.core.learner_state import import_learner
from daemon.model.lstm import build_model
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.snapshots import SnapshotStore
from daemon.settings import ModelSettings, Settings, StreamSettings


def synthetic_state(settings: Settings, parked: int) -> tuple[dict, dict]:
    """Arrays and metadata as `export_learner` writes them, for 32 bound + N parked keys."""
    m = settings.model
    b, n = m.batch_size, m.batch_size + parked
    rng = np.random.default_rng(0)
    f, t = m.n_features, m.n_targets
    arrays = {
        "key_slot": np.concatenate([np.arange(b), np.full(parked, -1)]).astype(np.int64),
        "key_rows": rng.normal(size=(n, m.layers, 2, m.units)).astype(np.float32),
        "key_reset_epoch": np.zeros(n, np.int64),
        "key_last_ts": np.full(n, 1.7e9),
        "key_last_target": np.zeros((n, t)),
        "key_has_last_target": np.zeros(n, bool),
        "free_slots": np.zeros(0, np.int64),
        "fstat_count": np.full(n, 100, np.int64),
        "fstat_mean": rng.normal(size=(n, f)),
        "fstat_m2": rng.uniform(1, 2, size=(n, f)),
        "dstat_count": np.zeros(n, np.int64),
        "dstat_mean": np.zeros((n, t)),
        "dstat_m2": np.zeros((n, t)),
        "key_last_level": np.zeros((n, t)),
        "key_has_last_level": np.zeros(n, bool),
        "tstat_count": np.zeros(n, np.int64),
        "tstat_mean": np.zeros((n, t)),
        "tstat_m2": np.zeros((n, t)),
        "buf_key": np.arange(n, dtype=np.int64),
        "buf_partition": np.zeros(n, np.int64),
        "buf_offset": np.arange(n, dtype=np.int64),
        "buf_ts": np.full(n, 1.7e9),
        "buf_x": rng.normal(size=(n, f)).astype(np.float32),
        "buf_location": np.zeros((n, t)),
        "buf_spread": np.ones((n, t)),
        "buf_forecast_mode": np.ones(n, bool),
        "buf_starts_sequence": np.zeros(n, bool),
        "buf_y": np.zeros((n, t), np.float32),
        "buf_has_y": np.zeros(n, bool),
        "buf_target": np.zeros((n, t)),
        "buf_has_target": np.zeros(n, bool),
        "buf_naive": rng.normal(size=(n, t)),
        "buf_has_naive": np.ones(n, bool),
        "buf_prediction": rng.normal(size=(n, t)),
        "buf_has_prediction": np.ones(n, bool),
    }
    meta = {
        "keys": [f"key-{i}" for i in range(n)],
        "step": 1000,
        "last_loss": 0.1,
        "resets": {},
        "untrained": 0,
        "trained_events": 0,
        "epoch": 0,
        "evictions": n,
        "parked_dropped": 0,
        "prequential": [0.0, 0.0, 0],
    }
    return arrays, meta


def parts(settings: Settings, directory: Path) -> tuple[OnlineLearner, Checkpointer]:
    model = build_model(settings)
    learner = OnlineLearner(settings, model)
    return learner, Checkpointer(SnapshotStore(directory, keep=2), learner, model, settings.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parked", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = Settings(
        model=ModelSettings(n_features=11, units=32, batch_size=32, window=16),
        stream=StreamSettings(max_keys=max(args.parked, 1)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        learner, checkpointer = parts(settings, Path(tmp))
        arrays, meta = synthetic_state(settings, args.parked)
        import_learner(learner, arrays, meta, now=0.0)
        writes, restores = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            info = checkpointer.save({0: 123})
            writes.append(time.perf_counter() - started)
            fresh, fresh_checkpointer = parts(settings, Path(tmp))
            started = time.perf_counter()
            fresh_checkpointer.restore()
            restores.append(time.perf_counter() - started)
            assert len(fresh.table.parked) == args.parked
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"keys: 32 bound + {args.parked:,} parked, snapshot {info.size_bytes / 1e6:.1f} MB")
        print(f"write   : best {min(writes):.3f} s, median {np.median(writes):.3f} s")
        print(f"restore : best {min(restores):.3f} s, median {np.median(restores):.3f} s")
        print(f"peak RSS: {rss_mb:.0f} MB")
        print(
            f"goal < 1 s each: write {'met' if min(writes) < 1 else 'MISSED'}, "
            f"restore {'met' if min(restores) < 1 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
