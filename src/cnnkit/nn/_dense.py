"""Dense kernels: matrix products split over the kernel threads, and the channels-last
flatten. Arrays in, arrays out (used by ``ops.linear`` and ``ops.shape``)."""

from __future__ import annotations

import numpy as np

from . import _gemm, _parallel, _recycle
from ._parallel import get_num_threads, parallel_for, parallel_matmul, split

__all__ = ["matmul", "two_matmuls", "flatten_small_nhwc"]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a (..., K) ``a`` and a (K, M) ``b``, its rows split over the kernel
    threads (NumPy's OpenBLAS runs single-threaded once the thread pool owns the cores)."""
    if a.ndim < 2:
        return a @ b
    return parallel_matmul(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[-1])


def two_matmuls(a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray):
    """``(a1 @ b1, a2 @ b2)`` for 2-D operands, the two products computed at the same time on
    the kernel threads (half of the threads each, their output columns split among them).

    Why: Linear's backward needs two GEMMs of the same cost (weight and input gradients).
    One thread per product instead of each product split over both threads packs every
    operand once instead of twice and dispatches to the pool once instead of twice
    (Linear 3136 -> 256, batch 64, 2 threads: CPU time of the two GEMMs 2.1 ms instead of
    2.5 ms). Serial when there is one thread or little work (see ``parallel_for``)."""
    # Threaded only when each product alone is worth a pool dispatch (Linear 512 -> 10 at
    # batch 256: 0.10 ms serial, 0.13 ms on two threads).
    work = min(a1.nbytes + b1.nbytes + a1.shape[0] * b1.shape[1] * a1.itemsize,
               a2.nbytes + b2.nbytes + a2.shape[0] * b2.shape[1] * a2.itemsize)
    threads = get_num_threads()
    if threads == 1 or work < _parallel.MIN_PARALLEL_BYTES:
        # Small layers: no pool, no Python block loop.
        return _gemm.matmul(a1, b1), _gemm.matmul(a2, b2)
    out1 = _recycle.empty((a1.shape[0], b1.shape[1]), dtype=np.result_type(a1, b1))
    out2 = _recycle.empty((a2.shape[0], b2.shape[1]), dtype=np.result_type(a2, b2))
    per = max(1, threads // 2)             # threads (column blocks) per product
    blocks = [(a1, b1, out1, lo, hi) for lo, hi in split(b1.shape[1], per)]
    blocks += [(a2, b2, out2, lo, hi) for lo, hi in split(b2.shape[1], per)]

    def run(start, stop):
        for a, b, out, lo, hi in blocks[start:stop]:
            _gemm.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

    parallel_for(len(blocks), run, work)
    return out1, out2


def flatten_small_nhwc(x: np.ndarray) -> np.ndarray | None:
    """(N, C, H, W) whose memory is NHWC (cnnkit's conv / pooling outputs) with at most 4
    pixels per channel -> contiguous (N, C*H*W) in PyTorch's (C, H, W) order; None otherwise.

    Why: ``reshape`` copies such an array with an inner loop over the H*W pixels of a
    channel, which is slow when there are only a few (VGG's 2x2 maps); one strided copy of
    the (N, C) plane per pixel is faster (batch 64, 512 x 2 x 2: 42 us instead of 105 us).
    With more pixels NumPy's own copy is the faster one (7x7: 60 us against 260 us).
    The planes are split over the threads by samples for large batches."""
    n, c, h, w = x.shape
    hw = h * w
    if hw > 4 or x.size == 0 or x.flags.c_contiguous or not x.transpose(0, 2, 3, 1).flags.c_contiguous:
        return None
    src = x.transpose(0, 2, 3, 1).reshape(n, hw, c)      # a view: the memory is NHWC
    out = _recycle.empty((n, c, hw), dtype=x.dtype)

    def run(a, b):
        for i in range(hw):
            out[a:b, :, i] = src[a:b, i, :]

    parallel_for(n, run, out.nbytes)
    return out.reshape(n, c * hw)


