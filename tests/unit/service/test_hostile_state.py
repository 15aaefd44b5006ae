"""State-topic records are untrusted input (DESIGN §11): hostile manifests, keys, payloads and
well-checksummed states with wrong contents are skipped with a reason and a counter; the new
owner then starts empty at the committed offset, never crashes, never half-loads. A property
test feeds arbitrary records to the reader's collection and verification."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_partition_moves import (
    _assign_partition_0,
    _Checkpoint,
    _feed,
    _learner,
)

from daemon.core.learner_state import export_partition
from daemon.core.untrusted import UntrustedRecord
from daemon.edges.state_topic import WRITE_ID_HEADER, StateTopic, _collect
from daemon.persist.partition_state import (
    PartitionState,
    decode,
    decode_manifest,
    encode,
    encode_manifest,
    pack_keys,
)
from daemon.service.metrics import DaemonMetrics

INPUT = "g/in"


def _good_state(offset: int = 9) -> PartitionState:
    owner = _learner(horizon=1)
    _feed(owner, 0, ["x", "y", "x", "y", "x"])
    return dataclasses.replace(pack_keys(*export_partition(owner, 0)), offset=offset)


def _with(state: PartitionState, **arrays: np.ndarray) -> PartitionState:
    return dataclasses.replace(state, arrays={**state.arrays, **arrays})


def _without(state: PartitionState, name: str) -> PartitionState:
    return dataclasses.replace(state, arrays={k: v for k, v in state.arrays.items() if k != name})


GOOD = _good_state()
WRONG_CONTENTS = {
    "missing array": _without(GOOD, "states"),
    "ev_key out of range": _with(GOOD, ev_key=GOOD.arrays["ev_key"] + 50),
    "ev_key not grouped": _with(GOOD, ev_key=GOOD.arrays["ev_key"][::-1].copy()),
    "NaN states": _with(GOOD, states=GOOD.arrays["states"] * np.nan),
    "float64 states": _with(GOOD, states=GOOD.arrays["states"].astype(np.float64)),
    "inf statistics": _with(GOOD, fstat_mean=GOOD.arrays["fstat_mean"] + np.inf),
    "negative counts": _with(GOOD, fstat_count=GOOD.arrays["fstat_count"] - 100),
    "another partition": dataclasses.replace(GOOD, meta={**GOOD.meta, "partition": 7}),
    "a partition that is a string": dataclasses.replace(GOOD, meta={**GOOD.meta, "partition": "0"}),
    "key lengths that do not add up": _with(GOOD, key_lengths=GOOD.arrays["key_lengths"] + 3),
    "keys that are not UTF-8": _with(GOOD, key_bytes=np.full_like(GOOD.arrays["key_bytes"], 0xFF)),
    "an extra array": _with(GOOD, surprise=np.zeros(3)),
}


@pytest.mark.parametrize("case", sorted(WRONG_CONTENTS))
def test_a_checksummed_state_with_wrong_contents_is_skipped_and_counted(case, caplog) -> None:
    learner = _learner(horizon=1)
    _feed(learner, 0, ["a", "b", "a"])  # a local state, older than the hostile one
    checkpoint = _Checkpoint({0: 3})
    metrics = DaemonMetrics()
    with caplog.at_level(logging.WARNING):
        source = _assign_partition_0(learner, checkpoint, WRONG_CONTENTS[case], metrics)
    skipped = [r for r in caplog.records if r.getMessage() == "internal record skipped"]
    assert len(skipped) == 1 and skipped[0].topic == "state"
    assert len(learner.stores.get(0, ())) == 0 and learner.pending_events() == 0
    assert 0 not in checkpoint.processed and source.seeks == {}  # empty at the committed offset
    total = sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "lstmd_internal_records_rejected"
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert total == 1


def test_a_fitting_state_still_restores_after_the_checks() -> None:
    learner = _learner(horizon=1)
    source = _assign_partition_0(learner, _Checkpoint({}), GOOD)
    assert sorted(learner.stores[0].row_of) == ["x", "y"] and source.seeks == {0: 9}


def _record(key: bytes, value: bytes | None, headers=(), offset: int = 0) -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value, headers=list(headers), offset=offset)


def _records_of(state: PartitionState, partition: int = 0) -> list[SimpleNamespace]:
    manifest, chunks = encode(state, INPUT, partition, "a", 4096)
    header = [(WRITE_ID_HEADER, manifest["write_id"].encode())]
    out = [
        _record(f"{INPUT}/{partition}/chunk/a/{i}".encode(), c, header)
        for i, c in enumerate(chunks)
    ]
    return [*out, _record(f"{INPUT}/{partition}/manifest".encode(), encode_manifest(manifest))]


def _manifest_of(**fields) -> bytes:
    manifest, _ = encode(GOOD, INPUT, 0, "a", 4096)
    return json.dumps({**manifest, **fields}).encode()


HOSTILE_MANIFESTS = {
    "chunks an integer": _manifest_of(chunks=5),
    "chunks of non-hex": _manifest_of(chunks=["zz" * 32]),
    "write_id an integer": _manifest_of(write_id=12),
    "slot c": _manifest_of(slot="c"),
    "offset negative": _manifest_of(offset=-1),
    "offset a float": _manifest_of(offset=1.5),
    "offset a bool": _manifest_of(offset=True),
    "meta a list": _manifest_of(meta=[1, 2]),
    "format 2": _manifest_of(format=2),
    "not json": b"\xff\xfe{",
    "a list": b"[1, 2, 3]",
    "huge": b" " * 2_000_000,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_refused_with_a_reason(case) -> None:
    with pytest.raises(UntrustedRecord) as refused:
        decode_manifest(HOSTILE_MANIFESTS[case])
    assert refused.value.reason


def test_an_npy_payload_behind_good_checksums_is_refused() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(10))
    payload = buffer.getvalue()
    manifest, _ = encode(GOOD, INPUT, 0, "a", 1 << 20)
    import hashlib

    digest = hashlib.sha256(payload).hexdigest()
    forged = {**manifest, "chunks": [digest], "sha256": digest, "bytes": len(payload)}
    with pytest.raises(UntrustedRecord, match="not_npz"):
        decode(forged, [payload])


def _reader(rejected: list) -> StateTopic:
    # The read path without a broker: collection and verification of records already fetched.
    reader = StateTopic.__new__(StateTopic)
    reader._input = INPUT
    reader._slots = {}
    reader._rejected = lambda reason, detail: rejected.append(reason)
    return reader


def _read(records: list, wanted: set[int]) -> tuple[dict[int, PartitionState], list[str]]:
    rejected: list[str] = []
    reader = _reader(rejected)
    manifests, chunks = _collect(records, INPUT, wanted, reader._rejected)
    states = {}
    for partition in sorted(wanted):
        state = reader._newest_valid(partition, manifests.get(partition, []), chunks)
        if state is not None:
            states[partition] = state
    return states, rejected


def test_hostile_keys_under_our_prefix_are_skipped_and_the_good_state_still_reads() -> None:
    hostile = [
        _record(f"{INPUT}/0/chunk/a/zz".encode(), b"x"),
        _record(f"{INPUT}/²/manifest".encode(), _manifest_of()),
        _record(f"{INPUT}/0/chunk/q/1".encode(), b"x"),
        _record(f"{INPUT}/0".encode(), b"x"),
        _record(f"{INPUT}/0/manifest".encode(), _manifest_of(partition=3)),
    ]
    states, rejected = _read([*_records_of(GOOD), *hostile], {0})
    assert states[0].offset == GOOD.offset
    assert sorted(rejected) == ["bad_key", "bad_key", "bad_key", "bad_key", "wrong_partition"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(
        st.builds(
            _record,
            key=st.one_of(
                st.binary(max_size=30).map(lambda b: f"{INPUT}/".encode() + b),
                st.sampled_from([f"{INPUT}/0/manifest".encode(), f"{INPUT}/0/chunk/a/0".encode()]),
            ),
            value=st.one_of(
                st.none(),
                st.binary(max_size=300),
                st.sampled_from([_manifest_of(), _manifest_of(chunks=[]), _manifest_of(bytes=0)]),
            ),
            headers=st.lists(
                st.tuples(st.just(WRITE_ID_HEADER), st.binary(max_size=40)), max_size=1
            ),
        ),
        max_size=12,
    )
)
def test_arbitrary_state_records_are_skipped_or_read_never_raised(records) -> None:
    states, _ = _read(records, {0, 1})
    for state in states.values():
        assert state.offset >= 0 and isinstance(state.arrays, dict)


def test_a_state_whose_offset_the_input_partition_never_reached_is_skipped() -> None:
    from test_partition_moves import TOPIC, _Source, _StateTopic

    from daemon.service.partitions import PartitionMoves

    class _ShortPartition(_Source):
        def offset_reachable(self, partition: int, offset: int) -> bool:
            return offset <= 100

    learner, metrics, checkpoint = _learner(horizon=1), DaemonMetrics(), _Checkpoint({})
    source = _ShortPartition()
    far = dataclasses.replace(GOOD, offset=10**12)
    moves = PartitionMoves(TOPIC, source, learner, checkpoint, metrics, _StateTopic({0: far}))
    moves.on_assign({(TOPIC, 0)})
    assert source.seeks == {} and len(learner.stores.get(0, ())) == 0
    labels = {"topic": "state", "reason": "offset_out_of_range"}
    assert metrics.registry.get_sample_value("lstmd_internal_records_rejected_total", labels) == 1
