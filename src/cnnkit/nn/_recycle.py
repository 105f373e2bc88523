"""Recycled memory for layer outputs and gradients: fresh arrays that reuse memory across steps.

Why: the C library hands large blocks back to the operating system when they are freed
(``munmap``, heap trimming), and the next step's arrays of the same sizes are then faulted
in and zero-filled by the kernel page by page. For the 4-conv reference net at batch 64 this
cost ~15 % of an inference step (measured 2 threads: 24.0 -> 20.9 ms per step with the
arrays below recycled; LeNet inference 29 300 -> 34 700 images/s). ``_buffers.workspace``
already keeps the *scratch* of a kernel call; this module does the same for the arrays a
kernel *returns* (a convolution's output, an input gradient, a pooling index map), which
outlive the call.

Why it is safe: an array is handed out again only when nothing but this recycler refers
to it. CPython counts references, and every NumPy view keeps a reference to the array it
was cut from (``.base``), as do memoryviews and ``torch.from_numpy``. So when the count of
a held buffer is back to the recycler's own reference, no Python object can read or write
that memory any more, and giving it out again is indistinguishable from ``np.empty``: the
caller gets memory with unspecified contents that nobody else sees. A result the user keeps
(``y = model(x)``), or a cache a layer keeps for ``backward``, is simply never reused.
The check and the hand-out happen under one lock, so two threads never get the same
buffer. Where reference counts do not tell the truth (a free-threaded build without the
GIL, another Python implementation), recycling is off and ``empty`` is ``np.empty``.

Bounded: only arrays of at least ``MIN_BYTES`` are recycled (small ones are cheap to
allocate); idle buffers not asked for within ``STALE_CALLS`` requests are released (checked on
every new allocation and every ``STALE_CALLS // 4`` requests), and idle bytes never exceed
``MAX_IDLE_BYTES`` after a check. ``empty_cache()``
releases every idle buffer (and this thread's kernel scratch).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from ._buffers import aligned_bytes, workspace

#: Smaller arrays come from ``np.empty`` (the C library keeps and reuses small blocks itself).
MIN_BYTES = 256 << 10
#: Idle buffers are released when they have not been asked for within this many requests.
STALE_CALLS = 4096
#: After a new allocation, at most this many bytes stay idle (oldest released first).
MAX_IDLE_BYTES = 512 << 20


def _ref_count(entry: list) -> int:
    # The same expression is used to calibrate ``_IDLE_REFS`` below, so that the count a
    # Python version reports for "held only by ``entry``" (3.14 borrows stack references,
    # earlier versions do not) is measured rather than assumed.
    return sys.getrefcount(entry[0])


_IDLE_REFS = _ref_count([object(), 0])


def _refcounts_are_reliable() -> bool:
    gil = getattr(sys, "_is_gil_enabled", None)
    if gil is not None and not gil():
        return False                         # free-threaded: counts may be deferred / biased
    return sys.implementation.name == "cpython"


def _num_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    size = dtype.itemsize
    for s in shape:
        size *= s
    return size


def _hand_out(entry: list, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    raw, _, offset = entry
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class Recycler:
    """A pool of byte buffers keyed by size, handed out as fresh arrays.

    Args:
        min_bytes: smaller requests go to ``np.empty``.
        stale_calls: idle buffers unused for this many requests are released.
        max_idle_bytes: cap on idle bytes kept after an allocation.

    ``empty(shape, dtype)`` / ``zeros`` / ``empty_like`` return arrays like NumPy's
    functions of the same name (C order; ``empty_like`` keeps the input's axis order).
    """

    def __init__(self, min_bytes: int = MIN_BYTES, stale_calls: int = STALE_CALLS,
                 max_idle_bytes: int = MAX_IDLE_BYTES) -> None:
        self.min_bytes = min_bytes
        self.stale_calls = stale_calls
        self.max_idle_bytes = max_idle_bytes
        self.enabled = _refcounts_are_reliable()
        self._lock = threading.Lock()
        self._held: dict[int, list[list]] = {}   # nbytes -> [[uint8 buffer, last request, offset], ...]
        self._clock = 0
        self._next_sweep = 0

    def empty(self, shape, dtype=np.float32) -> np.ndarray:
        """An uninitialised C-contiguous array, recycled when possible."""
        dtype = np.dtype(dtype)
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        nbytes = _num_bytes(shape, dtype)
        if not self.enabled or nbytes < self.min_bytes or dtype.hasobject:
            return np.empty(shape, dtype)
        with self._lock:
            self._clock += 1
            if self._clock >= self._next_sweep:     # long runs without a miss: sweep now and then
                self._release_idle(keep_clock=self._clock - self.stale_calls)
            for entry in self._held.get(nbytes, ()):
                if _ref_count(entry) == _IDLE_REFS:
                    entry[1] = self._clock
                    return _hand_out(entry, nbytes, dtype, shape)
            self._release_idle(keep_clock=self._clock - self.stale_calls)
            # The raw buffer is what the entry holds and counts: every array handed out
            # refers to it (NumPy's views keep the buffer that owns the memory as .base).
            raw, offset = aligned_bytes(nbytes)
            entry = [raw, self._clock, offset]
            self._held.setdefault(nbytes, []).append(entry)
            return _hand_out(entry, nbytes, dtype, shape)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        """Like ``np.zeros``; a recycled buffer is cleared with one fill."""
        out = self.empty(shape, dtype)
        out.fill(0)
        return out

    def empty_like(self, a: np.ndarray, dtype=None) -> np.ndarray:
        """Like ``np.empty_like(a)``: same shape and the same axis order in memory (an NHWC
        array seen through an NCHW view stays NHWC underneath)."""
        dtype = a.dtype if dtype is None else np.dtype(dtype)
        if a.flags.c_contiguous:
            return self.empty(a.shape, dtype)
        order = sorted(range(a.ndim), key=lambda ax: -a.strides[ax])
        expected = a.itemsize
        for ax in reversed(order):
            if a.shape[ax] > 1 and a.strides[ax] != expected:
                return np.empty_like(a, dtype=dtype)    # not a permuted dense array
            expected *= a.shape[ax]
        out = self.empty(tuple(a.shape[ax] for ax in order), dtype)
        return out.transpose(np.argsort(order))

    def idle_bytes(self) -> int:
        """Bytes held by buffers nobody is using."""
        with self._lock:
            return sum(nbytes for nbytes, es in self._held.items() for e in es if _ref_count(e) == _IDLE_REFS)

    def held_bytes(self) -> int:
        """Bytes held in total (in use or idle)."""
        with self._lock:
            return sum(nbytes * len(es) for nbytes, es in self._held.items())

    def clear(self) -> None:
        """Release every idle buffer (buffers in use are forgotten when they are dropped)."""
        with self._lock:
            self._release_idle(keep_clock=None)

    def _release_idle(self, keep_clock: int | None) -> None:
        # Called with the lock held. Keeps the most recently used idle buffers that were
        # asked for at or after keep_clock (none for None), newest first, as long as they
        # fit in max_idle_bytes; releases the other idle ones. Buffers in use stay.
        self._next_sweep = self._clock + max(1, self.stale_calls // 4)
        idle = [(n, e) for n, es in self._held.items() for e in es if _ref_count(e) == _IDLE_REFS]
        kept_bytes, drop = 0, set()
        for n, e in sorted(idle, key=lambda ne: -ne[1][1]):
            if keep_clock is None or e[1] < keep_clock or kept_bytes + n > self.max_idle_bytes:
                drop.add(id(e))
            else:
                kept_bytes += n
        if not drop:
            return
        for nbytes, entries in list(self._held.items()):
            kept = [e for e in entries if id(e) not in drop]
            if kept:
                self._held[nbytes] = kept
            else:
                del self._held[nbytes]


#: The recycler shared by every layer in the process.
recycler = Recycler()
empty = recycler.empty
zeros = recycler.zeros
empty_like = recycler.empty_like


def empty_cache() -> None:
    """Release the memory cnnkit keeps for reuse across steps: idle recycled arrays and
    the calling thread's kernel scratch (like ``torch.cuda.empty_cache``). Arrays still in
    use are unaffected; everything is re-created on demand."""
    recycler.clear()
    workspace.clear()
