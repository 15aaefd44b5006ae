"""Scale-out measurements on the embedded broker (README "Scale-out").

    python bench/scale_out.py restore --keys 100000
    python bench/scale_out.py replicas --days 600 --replicas 1 3 --sync 0 5 30

`restore`: a partition of N keys written through `Checkpoint` to the state topic and restored
through `PartitionMoves.on_assign` into a fresh learner (what a new owner does).
`replicas`: Birthdays (51 keys) pre-produced on a 6-partition topic, R `lstmd run` processes
started together; reports events/s from the first assignment until every offset is predicted,
and the prequential MAE summed over the replicas' final snapshots.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PARTITIONS = 6
N_FEATURES = 11


def _restore(keys: int) -> None:
    from daemon.core.events import Event
    from daemon.core.learner import OnlineLearner
    from daemon.edges.embedded import EmbeddedBroker
    from daemon.edges.kafka_io import client_options
    from daemon.edges.state_topic import StateTopic, ensure_state_topic
    from daemon.model.environment import configure_tensorflow
    from daemon.persist.checkpoint import Checkpoint
    from daemon.service.metrics import DaemonMetrics
    from daemon.service.partitions import PartitionMoves
    from daemon.settings import KafkaSettings, ModelSettings, Settings, StreamSettings

    configure_tensorflow()
    import numpy as np

    from daemon.model.lstm import StatefulLSTM

    settings = Settings(
        model=ModelSettings(n_features=8, units=16, batch_size=32, window=8),
        stream=StreamSettings(max_batch_wait_ms=0, max_keys=keys * 2),
    )
    model = StatefulLSTM(settings.model)
    with EmbeddedBroker(port=0) as broker:
        options = client_options(KafkaSettings(), broker.bootstrap)
        ensure_state_topic(options, "bench-state", PARTITIONS)
        topic = StateTopic(options, "bench-state", settings.kafka.input_topic)
        old = OnlineLearner(settings, model)
        features = np.ones(8, np.float64)
        for i in range(keys):
            old.ingest(Event(f"key-{i:010d}", float(i), features, None), 0, i)
        source = _Source()
        metrics = DaemonMetrics()
        checkpoint = Checkpoint(
            settings, source, _Flusher(), _NoLocal(), old, metrics, lambda _l: 0, topic
        )
        checkpoint.processed[0] = checkpoint._saved_offsets[0] = keys  # as after a local write
        started = time.perf_counter()
        checkpoint._write_state_topic()
        write_s = time.perf_counter() - started
        new = OnlineLearner(settings, model)
        fresh = Checkpoint(settings, source, _Flusher(), _NoLocal(), new, metrics, lambda _l: 0)
        moves = PartitionMoves(settings.kafka.input_topic, source, new, fresh, metrics, topic)
        started = time.perf_counter()
        moves.on_assign({(settings.kafka.input_topic, 0)})
        restore_s = time.perf_counter() - started
        topic.close()
    assert len(new.stores[0]) == keys and source.seeks == [((settings.kafka.input_topic, 0), keys)]
    print(
        json.dumps(
            {"keys": keys, "write_s": round(write_s, 2), "assign_restore_s": round(restore_s, 2)}
        )
    )


class _Source:
    def __init__(self) -> None:
        self.seeks: list[tuple] = []

    def commit(self, offsets: dict) -> None:
        pass

    def assignment(self) -> set:
        return set()

    def seek(self, partition: tuple, offset: int) -> None:
        self.seeks.append((partition, offset))


class _Flusher:
    def __init__(self) -> None:
        self.failed_by_topic: dict = {}

    def flush(self, timeout_s: float) -> int:
        return 0


class _NoLocal:
    def save(self, offsets: dict, extra: Any = None) -> None:
        raise OSError("not used")


def _env(bootstrap: str, tag: str, sync_s: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMD_")}
    env.update(
        {
            "LSTMD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LSTMD_KAFKA__INPUT_TOPIC": f"in-{tag}",
            "LSTMD_KAFKA__PREDICTIONS_TOPIC": f"pred-{tag}",
            "LSTMD_KAFKA__DEAD_LETTER_TOPIC": f"dlq-{tag}",
            "LSTMD_KAFKA__METRICS_TOPIC": f"met-{tag}",
            "LSTMD_KAFKA__STATE_TOPIC": f"state-{tag}",
            "LSTMD_KAFKA__WEIGHTS_TOPIC": f"weights-{tag}",
            "LSTMD_KAFKA__GROUP_ID": f"g-{tag}",
            "LSTMD_MODEL__N_FEATURES": str(N_FEATURES),
            "LSTMD_MODEL__TARGET_INDEX": "[0]",
            "LSTMD_MODEL__SYNC_EVERY_S": str(sync_s),
            "LSTMD_METRICS__PORT": "0",
            "LSTMD_LOG__FORMAT": "json",
            "LSTMD_LOG__LEVEL": "WARNING",
            # Commits (which end the measurement) follow checkpoints: every 2 s, each writing
            # the changed partitions to the state topic, as a scaled-out deployment would.
            "LSTMD_SNAPSHOT__EVERY_S": "2",
        }
    )
    return env


def _replicas(days: int, counts: list[int], syncs: list[float]) -> None:
    from daemon.edges.embedded import EmbeddedBroker
    from daemon.edges.kafka_io import (
        client_options,
        committed_offsets,
        ensure_topics,
        produce_values,
    )
    from daemon.settings import KafkaSettings
    from daemon.tools.datasets import load_birthdays

    messages = load_birthdays(limit=51 * days).messages
    with EmbeddedBroker(port=0) as broker, tempfile.TemporaryDirectory() as scratch:
        options = client_options(KafkaSettings(), broker.bootstrap)
        for count in counts:
            for sync_s in syncs if count > 1 else [0.0]:
                tag = uuid.uuid4().hex[:10]
                env = _env(broker.bootstrap, tag, sync_s)
                ensure_topics(options, [f"in-{tag}"], partitions=PARTITIONS)
                produce_values(options, f"in-{tag}", messages)
                root = Path(scratch) / tag
                procs: list[subprocess.Popen] = []
                started = time.monotonic()
                try:
                    for i in range(count):
                        env_i = {**env, "LSTMD_SNAPSHOT__DIRECTORY": str(root / f"r{i}")}
                        command = [sys.executable, "-m", "daemon", "run"]
                        procs.append(subprocess.Popen(command, env=env_i))
                    group, topic = f"g-{tag}", f"in-{tag}"
                    while sum(committed_offsets(options, group, topic).values()) < len(messages):
                        time.sleep(0.5)
                    seconds = time.monotonic() - started
                    for proc in procs:
                        proc.send_signal(signal.SIGTERM)
                    for proc in procs:
                        proc.wait(120)
                finally:
                    for proc in procs:
                        if proc.poll() is None:
                            proc.kill()
                print(json.dumps(_score(root, count, sync_s, len(messages), seconds)), flush=True)


def _score(root: Path, count: int, sync_s: float, events: int, seconds: float) -> dict:
    model_abs = naive_abs = n = 0.0
    for replica in sorted(root.iterdir()):
        newest = sorted(p for p in replica.glob("snap-*") if p.is_dir())[-1]
        meta = json.loads((newest / "learner.json").read_text())
        a, b, c = meta["prequential"]
        model_abs, naive_abs, n = model_abs + a, naive_abs + b, n + c
    return {
        "replicas": count,
        "sync_every_s": sync_s,
        "events": events,
        "seconds_incl_startup": round(seconds, 1),
        "events_per_s": round(events / seconds),
        "prequential_mae": round(model_abs / n, 3),
        "naive_mae": round(naive_abs / n, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    restore = sub.add_parser("restore")
    restore.add_argument("--keys", type=int, default=100_000)
    replicas = sub.add_parser("replicas")
    replicas.add_argument("--days", type=int, default=600)
    replicas.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    replicas.add_argument("--sync", type=float, nargs="+", default=[0.0, 5.0, 30.0])
    args = parser.parse_args()
    if args.what == "restore":
        _restore(args.keys)
    else:
        _replicas(args.days, args.replicas, args.sync)


if __name__ == "__main__":
    main()
