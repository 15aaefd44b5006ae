"""Write and restore one input partition's key-state store through the state topic.

Run: .venv/bin/python bench/state_restore.py [--keys 100000] [--features 8] [--versions 3]

Arrays the size a key-state store of `--keys` keys holds (DESIGN.md §4): per key h and c of
one 16-unit layer (2 x 16 float32), 10 float64 normalisation statistics, the last event time,
and one pending event (`--features` float32, its ts and offset), plus the key itself (a fixed
16-character string). The state is written `--versions` times (Tansu 0.6.0 does not compact, so
a reader sees every version; on Kafka compaction leaves at most two per partition), then a
fresh reader restores it. Prints JSON: sizes, write and restore seconds.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import numpy as np

from daemon.edges.embedded import EmbeddedBroker
from daemon.edges.kafka_io import client_options
from daemon.edges.state_topic import StateTopic, ensure_state_topic
from daemon.persist.partition_state import PartitionState
from daemon.settings import KafkaSettings

UNITS = 16
STATISTICS = 10


def store_arrays(keys: int, features: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Return arrays the size of a key-state store with `keys` keys."""
    rng = np.random.default_rng(seed)
    return {
        "keys": np.array([f"sensor-{i:09d}" for i in range(keys)], dtype="<U16"),
        "h0": rng.normal(size=(keys, UNITS)).astype(np.float32),
        "c0": rng.normal(size=(keys, UNITS)).astype(np.float32),
        "statistics": rng.normal(size=(keys, STATISTICS)),
        "last_ts": rng.uniform(1.7e9, 1.8e9, size=keys),
        "pending_features": rng.normal(size=(keys, 1, features)).astype(np.float32),
        "pending_ts": rng.uniform(1.7e9, 1.8e9, size=(keys, 1)),
        "pending_offsets": rng.integers(0, 1 << 40, size=(keys, 1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--versions", type=int, default=3)
    args = parser.parse_args()
    arrays = store_arrays(args.keys, args.features)
    state = PartitionState(offset=123_456, arrays=arrays, meta={"step": 1})
    with EmbeddedBroker() as broker:
        options = client_options(KafkaSettings(), broker.bootstrap)
        topic = f"bench-state-{uuid.uuid4().hex[:8]}"
        ensure_state_topic(options, topic, 6)
        writer = StateTopic(options, topic, "in")
        writes = []
        for _ in range(args.versions):
            start = time.perf_counter()
            writer.write({3: state})
            writes.append(time.perf_counter() - start)
        writer.close()
        start = time.perf_counter()
        reader = StateTopic(options, topic, "in")
        restored = reader.read([3])[3]
        restore_s = time.perf_counter() - start
        reader.close()
    assert restored.offset == state.offset
    for name, array in arrays.items():
        np.testing.assert_array_equal(restored.arrays[name], array)
    print(
        json.dumps(
            {
                "keys": args.keys,
                "state_mb": round(sum(a.nbytes for a in arrays.values()) / 1e6, 2),
                "versions_in_topic": args.versions,
                "write_s": [round(s, 2) for s in writes],
                "restore_s": round(restore_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
