"""Reusable scratch memory for the convolution kernels.

Why: an im2col matrix is tens to hundreds of MB at batch 256. Allocating a fresh one on
every call makes the C library ``mmap`` new pages and the kernel zero-fill them on first
touch, which costs more than the copy itself. A scratch buffer that lives across steps
is touched once.

Only *temporaries* (arrays that do not outlive the kernel call that asked for them) come
from here; outputs and anything kept for ``backward`` are ordinary fresh arrays, so a
caller can never see one of its results overwritten by a later call.
"""

from __future__ import annotations

import threading

import numpy as np

#: Byte alignment of scratch and recycled buffers: one AVX-512 register, one cache line.
#: Why: NumPy's allocator aligns to 16 bytes, so a buffer's offset within a cache line
#: depended on where the C library placed it, and MKL's GEMMs ran 4-6 % slower on such
#: operands (one thread, conv-shaped (7056, 288) @ (288, 32): 0.77-0.80 ms aligned,
#: 0.79-0.86 ms at 16-48 bytes past a line) - a speed that changed from run to run.
ALIGNMENT = 64


def aligned_bytes(nbytes: int) -> tuple[np.ndarray, int]:
    """A fresh uint8 buffer of at least ``nbytes`` and the offset at which ``ALIGNMENT``-aligned
    memory starts in it: ``(raw, offset)``, use ``raw[offset:offset + nbytes]``. The caller
    keeps ``raw`` itself where reference counts matter (NumPy's views point to it)."""
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    return raw, -raw.ctypes.data % ALIGNMENT


def aligned_empty(size: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of ``size`` elements whose data starts on an
    ``ALIGNMENT``-byte boundary."""
    dtype = np.dtype(dtype)
    raw, offset = aligned_bytes(size * dtype.itemsize)
    return raw[offset:offset + size * dtype.itemsize].view(dtype)


class Workspace:
    """Named, growable flat scratch buffers, one per (name, dtype) and per thread.

    ``get(name, shape, dtype)`` returns a C-contiguous view of the named buffer (its
    contents are garbage). Two views with the same name alias each other, so a kernel
    uses distinct names for temporaries that are alive at the same time.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _store(self) -> dict:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = {}
        return store

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = 1
        for s in shape:
            size *= int(s)
        store = self._store()
        key = (name, dtype.str)
        buf = store.get(key)
        if buf is None or buf.size < size:
            buf = aligned_empty(size, dtype)
            store[key] = buf
        return buf[:size].reshape(shape)

    def nbytes(self) -> int:
        """Bytes held by this thread's buffers (for memory reports)."""
        return sum(b.nbytes for b in self._store().values())

    def clear(self) -> None:
        """Drop this thread's buffers (they are re-created on demand)."""
        self._store().clear()


#: The scratch memory shared by every convolution in the process.
workspace = Workspace()


def batch_chunks(start: int, stop: int, bytes_per_sample: int, target: int):
    """(n0, n1) ranges covering [start, stop), each about ``target`` bytes of per-sample
    scratch (at least one sample): kernels work chunk by chunk so that their scratch
    stays small and the GEMM reads columns that were just written."""
    step = max(1, target // max(bytes_per_sample, 1))
    for n0 in range(start, stop, step):
        yield n0, min(stop, n0 + step)
