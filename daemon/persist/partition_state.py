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

from daemon.core.untrusted import UntrustedRecord, load_npz, whole_number

FORMAT_VERSION = 1
SLOTS = ("a", "b")
# What a manifest may claim (the state topic is untrusted input, DESIGN §11). 65,536 chunks of
# 512 KiB are 32 GiB, far past any store; offsets are Kafka's int64.
MAX_CHUNKS = 65_536
MAX_OFFSET = 2**62
MAX_MANIFEST_BYTES = 1_048_576
# Arrays in one partition state: the store's columns (about 40 today) with ample room.
MAX_ARRAYS = 512
_HEX = frozenset("0123456789abcdef")


class StateCorrupt(UntrustedRecord):
    """A stored state does not verify (missing or damaged chunk, bad manifest); skip it."""

    def __init__(self, detail: str, reason: str = "corrupt") -> None:
        super().__init__(reason, detail)


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
    if len(value) > MAX_MANIFEST_BYTES:
        raise StateCorrupt(f"manifest is {len(value)} bytes", "too_large")
    try:
        manifest = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateCorrupt(f"manifest is not JSON: {exc}", "bad_manifest") from None
    needed = {"format", "offset", "slot", "write_id", "sha256", "chunks", "meta", "bytes"}
    if not isinstance(manifest, dict) or not needed <= manifest.keys():
        raise StateCorrupt("manifest lacks fields", "bad_manifest")
    if manifest["format"] != FORMAT_VERSION or isinstance(manifest["format"], bool):
        raise StateCorrupt(f"manifest format {manifest['format']!r} (reads {FORMAT_VERSION})")
    _check_manifest_fields(manifest)
    return manifest


def _check_manifest_fields(manifest: dict[str, Any]) -> None:
    whole_number(manifest["offset"], "offset", 0, MAX_OFFSET)
    whole_number(manifest["bytes"], "bytes", 0, MAX_CHUNKS * (1 << 20))
    if "partition" in manifest:
        whole_number(manifest["partition"], "partition", 0, 2**31 - 1)
    if manifest["slot"] not in SLOTS:
        raise StateCorrupt(f"slot {manifest['slot']!r}", "bad_manifest")
    if not _hex(manifest["write_id"], 32) or not _hex(manifest["sha256"], 64):
        raise StateCorrupt("write_id or sha256 is not hex", "bad_manifest")
    chunks = manifest["chunks"]
    if not isinstance(chunks, list) or len(chunks) > MAX_CHUNKS:
        raise StateCorrupt("chunks is not a list of digests", "bad_manifest")
    if not all(_hex(digest, 64) for digest in chunks):
        raise StateCorrupt("chunks is not a list of digests", "bad_manifest")
    if not isinstance(manifest["meta"], dict):
        raise StateCorrupt("meta is not an object", "bad_manifest")


def _hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


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
    if len(payload) != manifest["bytes"]:
        raise StateCorrupt(f"{len(payload)} bytes, manifest says {manifest['bytes']}")
    if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise StateCorrupt("state checksum mismatch")
    arrays = load_npz(payload, MAX_ARRAYS)
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
    """Undo `pack_keys`: return (arrays, meta) as `export_partition` made them.

    Raises:
        UntrustedRecord: the key arrays do not describe a list of UTF-8 names.
    """
    arrays = dict(state.arrays)
    meta = dict(state.meta)
    if "key_bytes" not in arrays or "key_lengths" not in arrays:
        raise UntrustedRecord("bad_keys", "no key_bytes and key_lengths arrays")
    data, lengths = arrays.pop("key_bytes"), arrays.pop("key_lengths")
    if data.dtype != np.uint8 or data.ndim != 1 or lengths.dtype != np.int64 or lengths.ndim != 1:
        raise UntrustedRecord("bad_keys", "key arrays of the wrong dtype or rank")
    if lengths.size and (lengths.min() < 0 or int(lengths.sum()) != data.size):
        raise UntrustedRecord("bad_keys", "key lengths do not add up to the key bytes")
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]] if ends else []
    raw = data.tobytes()
    try:
        meta["keys"] = [raw[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]
    except UnicodeDecodeError:
        raise UntrustedRecord("bad_keys", "a key is not UTF-8") from None
    return arrays, meta
