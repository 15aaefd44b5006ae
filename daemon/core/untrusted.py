"""Reading bytes that anyone with write access to a topic could have written. Pure.

lstmd's own state and weights topics are input like any other (DESIGN §11): a stale replica, an
upgrade with another model shape or a tool may write there. Every record is checked here before
it touches anything, and what fails raises `UntrustedRecord` with a short reason, which the
readers count and skip; nothing in a record can crash the loop or make it allocate more than the
record's own size.
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any

import numpy as np

# np.savez writes every member uncompressed (ZIP_STORED): a member's size is then bounded by
# the record's own bytes. A deflated member could inflate a 48 KB record to 50 MB (measured).
_STORED = zipfile.ZIP_STORED
_ZIP_MAGIC = b"PK\x03\x04"


class UntrustedRecord(ValueError):
    """A record from an internal topic failed a check; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def load_npz(payload: bytes, max_arrays: int) -> dict[str, np.ndarray]:
    """Return the arrays of an uncompressed `.npz` record, checked before anything is inflated.

    Args:
        payload: the record's bytes.
        max_arrays: the most members a well-formed record has.

    Raises:
        UntrustedRecord: not a zip archive, a compressed or oversized member, too many members,
            object arrays (pickle), or arrays that do not load.
    """
    if not payload.startswith(_ZIP_MAGIC):
        raise UntrustedRecord("not_npz", "the value is not an .npz archive")
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            members = archive.infolist()
            _check_members(members, len(payload), max_arrays)
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except UntrustedRecord:
        raise
    except Exception as exc:  # zipfile, numpy's header parser: any failure is a bad record
        raise UntrustedRecord("bad_npz", f"{type(exc).__name__}: {exc}"[:200]) from None


def _check_members(members: list[zipfile.ZipInfo], size: int, max_arrays: int) -> None:
    if len(members) > max_arrays:
        raise UntrustedRecord("bad_npz", f"{len(members)} members, at most {max_arrays}")
    names = set()
    for info in members:
        if info.compress_type != _STORED:
            raise UntrustedRecord("compressed", f"member {info.filename!r} is compressed")
        if info.file_size > size or not info.filename.endswith(".npy"):
            raise UntrustedRecord("bad_npz", f"member {info.filename!r} is not a stored array")
        if info.filename in names:
            raise UntrustedRecord("bad_npz", f"member {info.filename!r} appears twice")
        names.add(info.filename)


def finite_number(value: Any, name: str, low: float, high: float) -> float:
    """Return `value` as a float when it is a real number in [low, high].

    Raises:
        UntrustedRecord: a bool, a string, NaN, infinite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UntrustedRecord("bad_meta", f"{name} is {type(value).__name__}, not a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise UntrustedRecord("out_of_range", f"{name}={value!r} outside [{low:g}, {high:g}]")
    return float(value)


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """Return `value` when it is an int (not a bool) in [low, high].

    Raises:
        UntrustedRecord: another type, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise UntrustedRecord("bad_meta", f"{name} is {type(value).__name__}, not an integer")
    if not low <= value <= high:
        raise UntrustedRecord("out_of_range", f"{name}={value} outside [{low}, {high}]")
    return value


def matching_arrays(
    arrays: list[np.ndarray], template: list[tuple[tuple[int, ...], np.dtype]], what: str
) -> None:
    """Check arrays against a template of (shape, dtype), and that every value is finite.

    Raises:
        UntrustedRecord: another count, shape or dtype ("shape"), or a NaN/inf ("nonfinite").
    """
    if len(arrays) != len(template):
        raise UntrustedRecord(
            "shape", f"{what}: {len(arrays)} arrays, this model has {len(template)}"
        )
    for index, (array, (shape, dtype)) in enumerate(zip(arrays, template, strict=True)):
        if array.shape != shape or array.dtype != dtype:
            raise UntrustedRecord(
                "shape",
                f"{what} {index}: {array.dtype}{list(array.shape)}, "
                f"this model {dtype}{list(shape)}",
            )
        if not np.isfinite(array).all():
            raise UntrustedRecord("nonfinite", f"{what} {index} holds NaN or inf")
