"""The state topic against the real broker: states move whole, the newest valid one wins."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
import pytest

from daemon.edges.kafka_io import read_all
from daemon.edges.state_topic import WRITE_ID_HEADER, StateTopic, ensure_state_topic
from daemon.persist.partition_state import (
    PartitionState,
    chunk_key,
    encode,
    encode_manifest,
    manifest_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 6
CHUNK_BYTES = 4096  # small, so that every state spans several chunks


def _state(partition: int, keys: int, offset: int) -> PartitionState:
    rng = np.random.default_rng(partition * 1000 + offset)
    return PartitionState(
        offset=offset,
        arrays={
            "keys": np.array([f"p{partition}-k{i}" for i in range(keys)]),
            "h": rng.normal(size=(keys, 2, 16)).astype(np.float32),
            "stats": rng.normal(size=(keys, 10)),
        },
        meta={"partition": partition, "weights_version": offset},
    )


def _assert_same(got: PartitionState, want: PartitionState) -> None:
    assert got.offset == want.offset and got.meta == want.meta
    assert got.arrays.keys() == want.arrays.keys()
    for name in want.arrays:
        np.testing.assert_array_equal(got.arrays[name], want.arrays[name])


@pytest.fixture
def state_topic(kafka_options: dict[str, Any]) -> str:
    name = f"state-{uuid.uuid4().hex[:10]}"
    ensure_state_topic(kafka_options, name, PARTITIONS)
    return name


def test_a_new_owner_reads_exactly_what_the_old_one_wrote(kafka_options, state_topic) -> None:
    writer = StateTopic(kafka_options, state_topic, "in", CHUNK_BYTES)
    written = {p: _state(p, keys=40 + p, offset=100 + p) for p in range(PARTITIONS)}
    writer.write(written)
    newer = _state(0, keys=3, offset=500)  # smaller: fewer chunks than the first write
    writer.write({0: newer})
    writer.write({0: _state(0, keys=2, offset=600)})  # back to slot a, which had more chunks
    writer.close()

    reader = StateTopic(kafka_options, state_topic, "in", CHUNK_BYTES)
    try:
        got = reader.read([0, 2, 5])
        assert sorted(got) == [0, 2, 5]
        _assert_same(got[0], _state(0, keys=2, offset=600))
        _assert_same(got[2], written[2])
        _assert_same(got[5], written[5])
        assert reader.read([7]) == {}  # never written
    finally:
        reader.close()
    # Slot a's chunks past the newest state's count were tombstoned (compaction drops them).
    first_count = len(encode(written[0], "in", 0, "a", CHUNK_BYTES)[1])
    last_count = len(encode(_state(0, 2, 600), "in", 0, "a", CHUNK_BYTES)[1])
    assert first_count > last_count
    latest = {r.key: r.value for r in read_all(kafka_options, state_topic, idle_s=0.5)}
    for index in range(last_count, first_count):
        assert latest[chunk_key("in", 0, "a", index).encode()] is None


def _send_chunks(producer, topic: str, manifest: dict, chunks: list[bytes], slot: str) -> None:
    headers = [(WRITE_ID_HEADER, manifest["write_id"].encode())]
    for index, chunk in enumerate(chunks):
        key = chunk_key("in", 1, slot, index).encode()
        producer.send(topic, key=key, value=chunk, headers=headers, partition=1)


def _read_one(options: dict[str, Any], topic: str, caplog) -> tuple[dict, int]:
    reader = StateTopic(options, topic, "in", CHUNK_BYTES)
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="lstmd.state_topic"):
            got = reader.read([1])
    finally:
        reader.close()
    skipped = [r for r in caplog.records if r.getMessage() == "state record skipped"]
    return got, len(skipped)


def test_damaged_or_half_written_newest_state_falls_back_to_the_last_good_one(
    kafka_options, state_topic, caplog
) -> None:
    writer = StateTopic(kafka_options, state_topic, "in", CHUNK_BYTES)
    good = _state(1, keys=30, offset=10)
    writer.write({1: good})  # slot a
    producer = writer._producer  # the same idempotent producer keeps the records in order

    # Newest manifest damaged (its checksums match nothing stored): skipped, good one loads.
    manifest, chunks = encode(_state(1, keys=30, offset=20), "in", 1, "b", CHUNK_BYTES)
    _send_chunks(producer, state_topic, manifest, chunks, "b")
    bad = {**manifest, "chunks": ["0" * 64] * len(chunks)}
    producer.send(
        state_topic, key=manifest_key("in", 1).encode(), value=encode_manifest(bad), partition=1
    )
    producer.flush(30)
    got, skipped = _read_one(kafka_options, state_topic, caplog)
    assert skipped == 1
    _assert_same(got[1], good)

    # A writer that died after some chunks, before its manifest (free slot b): no effect.
    crashed, crashed_chunks = encode(_state(1, keys=30, offset=30), "in", 1, "b", CHUNK_BYTES)
    _send_chunks(producer, state_topic, crashed, crashed_chunks[:2], "b")
    producer.flush(30)
    got, _ = _read_one(kafka_options, state_topic, caplog)
    _assert_same(got[1], good)

    # A zombie overwriting the good state's own slot: nothing verifies, nothing half-loads.
    zombie, zombie_chunks = encode(_state(1, keys=30, offset=40), "in", 1, "a", CHUNK_BYTES)
    _send_chunks(producer, state_topic, zombie, zombie_chunks[:1], "a")
    producer.flush(30)
    writer.close()
    got, skipped = _read_one(kafka_options, state_topic, caplog)
    assert got == {} and skipped == 2
