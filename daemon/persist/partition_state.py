"""A partition's state as bytes for the state topic: `.npz` chunks plus a JSON manifest.

Pure: no Kafka here (`daemon/edges/state_topic.py` moves the bytes). A state is `(offset,
arrays, meta)`: the key-state store of one input partition as of the consumer offset it
reflects. The arrays become one uncompressed `.npz` (read back with `allow_pickle=False`), cut
into chunks that each fit a produce request; the manifest names the offset, the meta, and the
sha256 of every chunk and of the whole, so a reader can tell a complete state from a damaged or
half-written one and never half-loads.

Keys (the state topic is compacted, so only the newest record per key survives):

* `{topic}/{partition}/manifest`: the newest complete state of that input partition;
* `{topic}/{partition}/chunk/{slot}/{i}`: chunk `i` of the state stored in `slot` (`a` or `b`).

Two slots, used in turn, so that writing a new state never overwrites the chunks the current
manifest points at: a writer that dies between its chunks and its manifest leaves the previous
state readable (the Kafka Streams changelog idea, made safe for multi-record values).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SLOTS = ("a", "b")


class StateCorrupt(Exception):
    """A stored state does not verify (missing or damaged chunk, bad manifest); skip it."""


@dataclass(frozen=True)
class PartitionState:
    """One input partition's key-state store as of `offset` (the next offset to read)."""

    offset: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def manifest_key(topic: str, partition: int) -> str:
    """Return the compaction key of a partition's manifest."""
    return f"{topic}/{partition}/manifest"


def chunk_key(topic: str, partition: int, slot: str, index: int) -> str:
    """Return the compaction key of chunk `index` in `slot` of a partition."""
    return f"{topic}/{partition}/chunk/{slot}/{index}"


def other_slot(slot: str | None) -> str:
    """Return the slot the next write uses, given the slot of the current manifest."""
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


def encode(
    state: PartitionState, topic: str, partition: int, slot: str, chunk_bytes: int
) -> tuple[dict[str, Any], list[bytes]]:
    """Turn a state into a manifest and its chunks.

    Args:
        state: the partition's state.
        topic: the input topic.
        partition: the input partition.
        slot: where the chunks go (`other_slot` of the current manifest).
        chunk_bytes: the largest chunk (under the producer's max request size).

    Returns:
        The manifest (JSON-ready) and the chunks, in order.

    Raises:
        ValueError: an array holds Python objects (they would need pickle).
    """
    for name, array in state.arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} has dtype object; store numbers or fixed strings")
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **state.arrays)
    payload = buffer.getvalue()
    chunks = [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)]
    manifest = {
        "format": FORMAT_VERSION,
        "topic": topic,
        "partition": partition,
        "offset": int(state.offset),
        "meta": state.meta,
        "slot": slot,
        # Chunks of a zombie writer using the same slot carry another write id: never mixed.
        "write_id": uuid.uuid4().hex,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "chunks": [hashlib.sha256(chunk).hexdigest() for chunk in chunks],
    }
    return manifest, chunks


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Return the manifest's record value."""
    return json.dumps(manifest, separators=(",", ":")).encode("utf-8")


def decode_manifest(value: bytes) -> dict[str, Any]:
    """Parse a manifest record value.

    Raises:
        StateCorrupt: not a manifest this version can read.
    """
    try:
        manifest = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateCorrupt(f"manifest is not JSON: {exc}") from None
    needed = {"format", "offset", "slot", "write_id", "sha256", "chunks", "meta"}
    if not isinstance(manifest, dict) or not needed <= manifest.keys():
        raise StateCorrupt("manifest lacks fields")
    if manifest["format"] != FORMAT_VERSION:
        raise StateCorrupt(f"manifest format {manifest['format']} (this reads {FORMAT_VERSION})")
    return manifest


def decode(manifest: Mapping[str, Any], chunks: Sequence[bytes | None]) -> PartitionState:
    """Rebuild a state from its manifest and chunks, verifying every checksum.

    Args:
        manifest: from `decode_manifest`.
        chunks: chunk `i` at index `i`; None where it is missing.

    Raises:
        StateCorrupt: a chunk is missing or does not match, or the arrays do not load.
    """
    expected = manifest["chunks"]
    if len(chunks) != len(expected):
        raise StateCorrupt(f"{len(chunks)} chunks, manifest lists {len(expected)}")
    for index, (chunk, digest) in enumerate(zip(chunks, expected, strict=True)):
        if chunk is None:
            raise StateCorrupt(f"chunk {index} missing")
        if hashlib.sha256(chunk).hexdigest() != digest:
            raise StateCorrupt(f"chunk {index} checksum mismatch")
    payload = b"".join(chunks)  # type: ignore[arg-type]
    if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise StateCorrupt("state checksum mismatch")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as exc:
        raise StateCorrupt(f"arrays do not load: {exc}") from None
    return PartitionState(int(manifest["offset"]), arrays, dict(manifest["meta"]))


def pack_keys(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> PartitionState:
    """Move the key list from the meta into arrays, so the manifest stays small.

    A manifest is one record (under the 1 MiB request limit); 100,000 keys as JSON are ~1.7 MB.
    The keys become their UTF-8 bytes end to end plus a length per key: no pickle, no
    fixed-width strings (one long key would widen every row).
    """
    keys = [key.encode("utf-8") for key in meta.get("keys", [])]
    packed = dict(arrays)
    packed["key_bytes"] = np.frombuffer(b"".join(keys), dtype=np.uint8).copy()
    packed["key_lengths"] = np.array([len(key) for key in keys], dtype=np.int64)
    rest = {name: value for name, value in meta.items() if name != "keys"}
    return PartitionState(-1, packed, rest)


def unpack_keys(state: PartitionState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Undo `pack_keys`: return (arrays, meta) as `export_partition` made them."""
    arrays = dict(state.arrays)
    meta = dict(state.meta)
    if "key_bytes" in arrays:
        data = arrays.pop("key_bytes").tobytes()
        ends = np.cumsum(arrays.pop("key_lengths")).tolist()
        starts = [0, *ends[:-1]] if ends else []
        meta["keys"] = [data[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]
    return arrays, meta
