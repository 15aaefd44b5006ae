"""Hostile records on lstmd's own state and weights topics, against a real broker and the real
daemon with weight sync on (DESIGN §11): the daemon starts, stays ready, answers every event,
counts what it skipped and stops cleanly; then again, restarted on top of newer hostile records
written over the state it left."""

from __future__ import annotations

import io
import json
import time
import zlib
from typing import Any

import numpy as np
import pytest
from daemon_helpers import daemon_settings
from kafka import KafkaProducer

from daemon.edges.kafka_io import client_options, ensure_topics, produce_values, read_all
from daemon.edges.state_topic import WRITE_ID_HEADER, ensure_state_topic
from daemon.edges.weights_topic import META_HEADER, ensure_weights_topic
from daemon.persist.partition_state import encode, encode_manifest
from daemon.service.app import build_daemon
from daemon.settings import ModelSettings, SnapshotSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PARTITIONS = 3
KEYS = [f"k{i}" for i in range(9)]


def _events(days: range) -> list[tuple[bytes, bytes]]:
    return [
        (
            k.encode(),
            json.dumps({"key": k, "ts": 1.7e9 + 3600 * d, "features": [d % 5, i]}).encode(),
        )
        for d in days
        for i, k in enumerate(KEYS)
    ]


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _deflated(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _hostile_weights(replica: str) -> list[tuple[bytes | None, bytes | None, list]]:
    def meta(**fields: Any) -> list:
        base = {"sample_count": 10, "version": 1, "time": time.time(), "arrays": 3, **fields}
        return [(META_HEADER, json.dumps(base).encode())]

    w = _npz(w0=np.ones((2, 32), np.float32), w1=np.ones((8, 32), np.float32), w2=np.ones(32))
    return [
        (replica.encode(), w, []),  # no header
        (replica.encode(), w, [(META_HEADER, b"[1,2]")]),
        (replica.encode(), w, [(META_HEADER, b"\xff")]),
        (b"x/npy", b"\x93NUMPY" + bytes(100), meta()),
        (b"x/bomb", _deflated(w0=np.zeros(10_000_000, np.float32)), meta()),
        (b"x/nan", _npz(w0=np.full((2, 32), np.nan, np.float32)), meta(arrays=1)),
        (b"x/shape", w, meta()),  # float64 bias, 32 units: another model
        (b"x/neg", w, meta(sample_count=-7)),
        (b"x/future", w, meta(time=time.time() + 10**9)),
        (b"x/huge", w, meta(sample_count=10**30)),
        (b"\xff\xfe", w, meta()),
        (b"x/list-meta", w, [(META_HEADER, b'{"arrays": [1], "sample_count": {}}')]),
    ]


def _hostile_state(prefix: str, offset: int) -> list[tuple[bytes, bytes | None, list]]:
    out: list[tuple[bytes, bytes | None, list]] = []
    for p in range(PARTITIONS):
        manifest, _ = encode_state_like(p, offset)
        npy = b"\x93NUMPY" + bytes(64)
        import hashlib

        digest = hashlib.sha256(npy).hexdigest()
        forged = {**manifest, "chunks": [digest], "sha256": digest, "bytes": len(npy), "slot": "b"}
        header = [(WRITE_ID_HEADER, forged["write_id"].encode())]
        out += [
            (f"{prefix}/{p}/chunk/b/0".encode(), npy, header),
            (f"{prefix}/{p}/manifest".encode(), encode_manifest(forged), []),
            (f"{prefix}/{p}/manifest".encode(), json.dumps({**manifest, "chunks": 5}).encode(), []),
            (f"{prefix}/{p}/chunk/a/zz".encode(), b"x", []),
            (f"{prefix}/{p}/manifest".encode(), b"\xff not json", []),
            (f"{prefix}/{p}/manifest".encode(), zlib.compress(b"{}" * 1000), []),
        ]
    out.append((f"{prefix}/²/manifest".encode(), b"{}", []))
    return out


def encode_state_like(partition: int, offset: int) -> tuple[dict, list[bytes]]:
    from daemon.persist.partition_state import PartitionState

    state = PartitionState(offset, {"a": np.zeros(3)}, {"partition": partition})
    return encode(state, "unused", partition, "a", 4096)


def _send(options: dict, topic: str, records: list, partition_of=None) -> None:
    producer = KafkaProducer(**options, acks="all")
    try:
        for index, (key, value, headers) in enumerate(records):
            partition = partition_of(index, key) if partition_of else 0
            producer.send(topic, key=key, value=value, headers=headers, partition=partition)
        producer.flush(30)
    finally:
        producer.close()


def _run_until_answered(settings, options, expected: int) -> tuple[Any, float]:
    daemon = build_daemon(settings, options)
    rejected: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 120

        def done(runner) -> bool:
            assert time.monotonic() < deadline, f"answered {runner.predictions_sent} of {expected}"
            return runner.predictions_sent >= expected

        daemon.runner.run(until=done)  # returns normally: a graceful stop, exit 0 in `run`
        for metric in daemon.metrics.registry.collect():
            if metric.name == "lstmd_internal_records_rejected":
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        topic = sample.labels["topic"]
                        rejected[topic] = rejected.get(topic, 0) + sample.value
        ready = daemon.runner._health.readiness()
    finally:
        daemon.close()
    return ready, rejected


def test_hostile_records_on_both_internal_topics_leave_the_daemon_ready_and_answering(
    broker, tmp_path
) -> None:
    hostile_scenario(broker, tmp_path)


def hostile_scenario(broker, tmp_path) -> None:
    settings = daemon_settings(
        broker.bootstrap,
        tmp_path,
        model=ModelSettings(n_features=2, units=8, batch_size=4, window=4, sync_every_s=1.0),
        snapshot=SnapshotSettings(directory=tmp_path, every_steps=5, every_s=0),
    )
    kafka = settings.kafka
    options = client_options(kafka, broker.bootstrap)
    ensure_topics(options, [kafka.input_topic], partitions=PARTITIONS)
    ensure_state_topic(options, kafka.state_topic, PARTITIONS)
    ensure_weights_topic(options, kafka.weights_topic)
    prefix = f"{kafka.group_id}/{kafka.input_topic}"
    replica = f"{kafka.group_id}/pod-hostile"
    _send(options, kafka.weights_topic, _hostile_weights(replica))
    _send(options, kafka.state_topic, _hostile_state(prefix, 10**12), lambda i, _: i % PARTITIONS)

    first = _events(range(20))
    produce_values(options, kafka.input_topic, first)
    ready, rejected = _run_until_answered(settings, options, len(first))
    assert ready == (True, "")
    assert rejected.get("weights", 0) >= 10 and rejected.get("state", 0) >= 10

    # Newer hostile records over the state the first run left, then more events and a restart.
    _send(options, kafka.weights_topic, _hostile_weights(replica))
    _send(options, kafka.state_topic, _hostile_state(prefix, 10**12), lambda i, _: i % PARTITIONS)
    second = _events(range(20, 40))
    produce_values(options, kafka.input_topic, second)
    ready, rejected = _run_until_answered(settings, options, len(second))
    assert ready == (True, "")
    assert rejected.get("weights", 0) >= 10 and rejected.get("state", 0) >= 10

    answered = {
        (p["source_partition"], p["source_offset"])
        for p in (json.loads(r.value) for r in read_all(options, kafka.predictions_topic))
    }
    assert len(answered) == len(first) + len(second)  # every event answered, none lost
