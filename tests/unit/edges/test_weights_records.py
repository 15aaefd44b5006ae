"""Weights-topic records are untrusted input (DESIGN §11): every hostile record is skipped with
a reason, never adopted and never raised past the reader; a property test feeds arbitrary
records to the decoder."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core.untrusted import UntrustedRecord
from daemon.edges.weights_topic import (
    MAX_CLOCK_SKEW_S,
    META_HEADER,
    decode_record,
    encode_weights,
    template_of,
)

NOW = 1_800_000_000.0
GOOD = [np.ones((3, 16), np.float32), np.zeros(16, np.float32)]
TEMPLATE = template_of(GOOD)


def _meta(**fields) -> list[tuple[str, bytes]]:
    meta = {"sample_count": 10, "version": 1, "time": NOW, "arrays": 2, **fields}
    return [(META_HEADER, json.dumps(meta).encode())]


def _npz(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def test_a_record_this_lstmd_writes_decodes_whole() -> None:
    replica = decode_record(b"g/pod-0", encode_weights(GOOD), _meta(), TEMPLATE, NOW)
    assert (replica.replica_id, replica.sample_count, replica.version) == ("g/pod-0", 10, 1)
    for got, want in zip(replica.weights, GOOD, strict=True):
        np.testing.assert_array_equal(got, want)


def _npy_value() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, GOOD[0])
    return buffer.getvalue()


def _bomb() -> bytes:
    # 50 MB of zeros deflate to ~50 KB: the reader must refuse before inflating.
    return _npz({"w0": np.zeros((3, 16), np.float32), "w1": np.zeros(12_500_000, np.float32)}, True)


def _zip_with_text() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("w0.npy", b"not an array at all")
        archive.writestr("w1.npy", b"\x93NUMPY")
    return buffer.getvalue()


HOSTILE = {
    "no header": (b"g/p", encode_weights(GOOD), []),
    "header not json": (b"g/p", encode_weights(GOOD), [(META_HEADER, b"\xff{")]),
    "header a list": (b"g/p", encode_weights(GOOD), [(META_HEADER, b"[1, 2]")]),
    "header huge": (b"g/p", encode_weights(GOOD), [(META_HEADER, b" " * 10_000)]),
    "count a string": (b"g/p", encode_weights(GOOD), _meta(sample_count="10")),
    "count a bool": (b"g/p", encode_weights(GOOD), _meta(sample_count=True)),
    "count negative": (b"g/p", encode_weights(GOOD), _meta(sample_count=-5)),
    "count huge": (b"g/p", encode_weights(GOOD), _meta(sample_count=10**18)),
    "version negative": (b"g/p", encode_weights(GOOD), _meta(version=-1)),
    "time in the future": (b"g/p", encode_weights(GOOD), _meta(time=NOW + 10 * MAX_CLOCK_SKEW_S)),
    "time NaN": (
        b"g/p",
        encode_weights(GOOD),
        [(META_HEADER, b'{"sample_count": 1, "version": 1, "time": NaN, "arrays": 2}')],
    ),
    "arrays claims three": (b"g/p", encode_weights(GOOD), _meta(arrays=3)),
    "an .npy value": (b"g/p", _npy_value(), _meta()),
    "a deflate bomb": (b"g/p", _bomb(), _meta()),
    "NaN weights": (b"g/p", encode_weights([GOOD[0] * np.nan, GOOD[1]]), _meta()),
    "inf weights": (b"g/p", encode_weights([GOOD[0], GOOD[1] + np.inf]), _meta()),
    "other units": (
        b"g/p",
        encode_weights([np.ones((3, 32), np.float32), np.zeros(32, np.float32)]),
        _meta(),
    ),
    "float64": (b"g/p", encode_weights([g.astype(np.float64) for g in GOOD]), _meta()),
    "missing array": (b"g/p", _npz({"w0": GOOD[0]}), _meta()),
    "renamed arrays": (b"g/p", _npz({"a": GOOD[0], "b": GOOD[1]}), _meta()),
    "text members": (b"g/p", _zip_with_text(), _meta()),
    "random bytes": (b"g/p", b"PK\x03\x04" + bytes(range(256)) * 4, _meta()),
    "key not utf-8": (b"\xff\xfe", encode_weights(GOOD), _meta()),
    "key empty": (b"", encode_weights(GOOD), _meta()),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_record_is_refused_with_a_reason(case: str) -> None:
    key, value, headers = HOSTILE[case]
    with pytest.raises(UntrustedRecord) as refused:
        decode_record(key, value, headers, TEMPLATE, NOW)
    assert refused.value.reason and refused.value.detail


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(st.none(), st.binary(max_size=40)),
    value=st.one_of(
        st.binary(max_size=2000),
        st.binary(max_size=2000).map(lambda b: b"PK\x03\x04" + b),
        st.just(encode_weights(GOOD)).map(lambda b: b[: len(b) // 2]),
    ),
    meta=st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(["sample_count", "version", "time", "arrays", "x"]),
            st.one_of(
                st.integers(-(10**20), 10**20),
                st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=5),
                st.booleans(),
                st.none(),
                st.lists(st.integers(), max_size=3),
            ),
        ).map(lambda d: json.dumps(d).encode()),
    ),
)
def test_arbitrary_records_are_refused_or_decoded_never_raised(key, value, meta) -> None:
    try:
        replica = decode_record(key, value, [(META_HEADER, meta)], TEMPLATE, NOW)
    except UntrustedRecord:
        return
    assert all(np.isfinite(w).all() for w in replica.weights)
    assert replica.sample_count >= 0 and replica.time <= NOW + MAX_CLOCK_SKEW_S
