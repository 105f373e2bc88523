"""Pin glibc's malloc thresholds, so that PyTorch is timed in one state, its fastest.

Why: glibc serves blocks above its *mmap threshold* (128 KB at start) with fresh ``mmap``
pages, which the kernel zero-fills on first touch, and returns them on ``free``. The
threshold is dynamic: each ``free`` of an mmapped block raises it to that block's size
(up to 32 MB). Whether PyTorch's 1-10 MB activations come from the heap (reused pages)
or from fresh mmaps (page faults on every step) thus depends on what the process freed
before. Measured here, PyTorch's 4-conv inference at batch 64, 2 threads, five fresh
processes each: 21.1-25.6 ms per batch with the default, 15.1-16.4 ms with the
thresholds pinned. That is the "bimodal" PyTorch of earlier benchmark runs; cnnkit
recycles its buffers and moved by 0-5 %.

``pin_malloc_thresholds`` fixes the mmap threshold at 32 MB and the trim threshold at
1 GB with ``mallopt`` (which also turns the dynamic adjustment off), so that both
libraries run with their memory reused, and every run measures PyTorch at its best.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def pin_malloc_thresholds() -> str:
    """Set glibc's mmap and trim thresholds (see the module docstring).

    Returns:
        What was done, for the benchmark's header: the values, or why nothing was set
        (not glibc, or mallopt refused).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "malloc thresholds: default (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "malloc thresholds: default (mallopt refused)"
    return f"glibc malloc: mmap threshold pinned at {MMAP_THRESHOLD >> 20} MB, trim at {TRIM_THRESHOLD >> 20} MB"
