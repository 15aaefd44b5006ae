"""Zero-filled arrays on pages of their own, for the store's columns that grow by doubling. Pure.

`np.zeros` takes its memory from malloc. Once glibc has freed one large block it raises its mmap
threshold (up to 32 MB), so the next columns of a growing store come from the heap: a doubling
then memsets its spare half (RSS for rows no key uses yet), and the column it replaced stays in
the heap as a hole instead of going back to the system. Measured with 300,000 idle keys: 53 bytes
per key of such free heap, and more of untouched spare rows made resident. An anonymous mmap is
zero pages the kernel fills on first write, and is unmapped when the array is freed.
"""

from __future__ import annotations

import mmap

import numpy as np

# Below this size a column is left to malloc: a mapping costs a whole page and a system call,
# and small stores (many partitions with few keys) would waste more than they save.
_OWN_PAGES_BYTES = 1 << 20  # 1 MiB


def zeros(shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """Return a writable zero-filled array; large ones on anonymous pages, free until written."""
    kind = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
    if size < _OWN_PAGES_BYTES:
        return np.zeros(shape, kind)
    pages = mmap.mmap(-1, size)  # anonymous, private, zero-filled; unmapped with the array
    return np.frombuffer(pages, dtype=kind, count=size // kind.itemsize).reshape(shape)


def grown(values: np.ndarray, rows: int) -> np.ndarray:
    """Return `values` (rows first) with room for `rows` rows; the new rows are zero."""
    out = zeros((rows, *values.shape[1:]), values.dtype)
    out[: len(values)] = values
    return out
