"""The state-topic codec: a partition's state survives the round trip, or is refused whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.persist.partition_state import (
    PartitionState,
    StateCorrupt,
    chunk_key,
    decode,
    decode_manifest,
    encode,
    encode_manifest,
    manifest_key,
    other_slot,
)


def _state(keys: int = 50) -> PartitionState:
    rng = np.random.default_rng(0)
    return PartitionState(
        offset=1234,
        arrays={
            "keys": np.array([f"k{i}" for i in range(keys)]),
            "h0": rng.normal(size=(keys, 16)).astype(np.float32),
            "stats": rng.normal(size=(keys, 10)),
        },
        meta={"step": 7, "weights_version": "v3"},
    )


def test_round_trip_over_many_chunks_is_exact() -> None:
    state = _state()
    manifest, chunks = encode(state, "in", 3, "a", chunk_bytes=1000)
    assert len(chunks) > 3 and all(len(c) <= 1000 for c in chunks)
    back = decode(decode_manifest(encode_manifest(manifest)), chunks)
    assert back.offset == 1234 and back.meta == state.meta
    assert back.arrays.keys() == state.arrays.keys()
    for name, array in state.arrays.items():
        assert back.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[name], array)


@pytest.mark.parametrize("damage", ["flip", "missing", "drop_last", "swap"])
def test_damaged_state_is_refused_whole(damage: str) -> None:
    manifest, chunks = encode(_state(), "in", 0, "b", chunk_bytes=700)
    parts: list[bytes | None] = list(chunks)
    if damage == "flip":
        parts[1] = bytes([parts[1][0] ^ 1]) + parts[1][1:]
    elif damage == "missing":
        parts[2] = None
    elif damage == "drop_last":
        parts = parts[:-1]
    else:
        parts[0], parts[1] = parts[1], parts[0]
    with pytest.raises(StateCorrupt):
        decode(manifest, parts)


def test_object_arrays_are_refused_because_they_need_pickle() -> None:
    state = PartitionState(0, {"bad": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="dtype object"):
        encode(state, "in", 0, "a", 1000)


def test_manifest_of_another_format_or_not_json_is_corrupt() -> None:
    manifest, _ = encode(_state(2), "in", 0, "a", 1000)
    with pytest.raises(StateCorrupt, match="format"):
        decode_manifest(encode_manifest({**manifest, "format": 99}))
    with pytest.raises(StateCorrupt):
        decode_manifest(b"\xff not json")


def test_keys_and_slots() -> None:
    assert manifest_key("in", 4) == "in/4/manifest"
    assert chunk_key("in", 4, "b", 12) == "in/4/chunk/b/12"
    assert other_slot(None) == "a" and other_slot("a") == "b" and other_slot("b") == "a"


def test_keys_travel_as_arrays_so_the_manifest_stays_small():
    from daemon.persist.partition_state import pack_keys, unpack_keys

    keys = ["α-ключ", "", "k" * 300, *(f"key-{i}" for i in range(50_000))]
    arrays = {"states": np.zeros((len(keys), 2), np.float32)}
    packed = pack_keys(arrays, {"partition": 3, "keys": keys})
    assert "keys" not in packed.meta and len(json.dumps(packed.meta)) < 100
    back_arrays, back_meta = unpack_keys(packed)
    assert back_meta == {"partition": 3, "keys": keys}
    assert set(back_arrays) == {"states"}
    empty = unpack_keys(pack_keys({}, {"partition": 0, "keys": []}))
    assert empty[1]["keys"] == []
