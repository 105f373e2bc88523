"""Compiled 2x2 / stride-2 max and average pooling (NHWC), the optional Numba path of
``_pool_kernels``.

Each kernel is the loop its NumPy twin in ``_pool_kernels`` writes as whole-array calls,
with the same arithmetic, so both give the same bits (``_max4_with_index``'s tournament:
pairs (0, 1) and (2, 3), then the pair winners; ties to the first tap; NaN propagates as in
``np.maximum``; the average's adds in tap order, then one multiply by the reciprocal).
Windows are the 2x2 blocks at (2i, 2j); an odd last row or column of the input is in no
window (floor mode), and the scatters leave it as they find it.
See ``_jit`` for when these run and what they gain.
"""

from __future__ import annotations

import numpy as np

from . import _jit
from ._jit import kernel


@kernel
def max_pool_2x2_index(x, out, idx, dead_bit):
    """out[n, i, j, c] = max of x's window (2i.., 2j..), idx = its first maximal tap
    (0..3, row-major), with ``dead_bit`` or-ed in where the maximum is not > 0 (0 to skip).

    Shape: x (N, H, W, C), out and idx (N, H // 2, W // 2, C), all C-contiguous; idx uint8.
    Image rows are handled as flat runs of W*C values (faster than 4-D indexing at C = 10)."""
    n, ho, wo, c = out.shape
    h, w = x.shape[1], x.shape[2]
    x3, out3, idx3 = x.reshape(n, h, w * c), out.reshape(n, ho, wo * c), idx.reshape(n, ho, wo * c)
    dead = idx.dtype.type(dead_bit)
    for b in range(n):
        for i in range(ho):
            top, low, dst, tap = x3[b, 2 * i], x3[b, 2 * i + 1], out3[b, i], idx3[b, i]
            for j in range(wo):
                p, q = 2 * j * c, j * c          # window (i, j) starts at top[p]; its output at dst[q]
                for k in range(c):
                    a0, a1, a2, a3 = top[p + k], top[p + c + k], low[p + k], low[p + c + k]
                    # np.maximum(a, b): a when a >= b or a is NaN, else b.
                    m1 = a0 if (a0 >= a1 or a0 != a0) else a1
                    m2 = a2 if (a2 >= a3 or a2 != a2) else a3
                    t1 = 1 if a1 > a0 else 0
                    t2 = 3 if a3 > a2 else 2
                    m = m1 if (m1 >= m2 or m1 != m1) else m2
                    t = t2 if m2 > m1 else t1
                    dst[q + k] = m
                    tap[q + k] = t | dead if not (m > 0) else t


@kernel
def max_pool_2x2(x, out):
    """``max_pool_2x2_index`` without the index (inference).

    Shape: x (N, H, W, C), out (N, H // 2, W // 2, C), C-contiguous."""
    n, ho, wo, c = out.shape
    h, w = x.shape[1], x.shape[2]
    x3, out3 = x.reshape(n, h, w * c), out.reshape(n, ho, wo * c)
    for b in range(n):
        for i in range(ho):
            top, low, dst = x3[b, 2 * i], x3[b, 2 * i + 1], out3[b, i]
            for j in range(wo):
                p, q = 2 * j * c, j * c
                for k in range(c):
                    a0, a1, a2, a3 = top[p + k], top[p + c + k], low[p + k], low[p + c + k]
                    m1 = a0 if (a0 >= a1 or a0 != a0) else a1
                    m2 = a2 if (a2 >= a3 or a2 != a2) else a3
                    dst[q + k] = m1 if (m1 >= m2 or m1 != m1) else m2


@kernel
def max_pool_2x2_scatter(grad_out, idx, grad_in):
    """grad_in[n, 2i + r, 2j + s, c] = grad_out[n, i, j, c] where idx == 2r + s, else 0:
    every output's gradient to its winning tap (a dead index matches no tap).

    Shape: grad_out and idx (N, Ho, Wo, C), grad_in (N, H, W, C) with H >= 2 Ho, W >= 2 Wo,
    all C-contiguous. Each input row is written in one sweep, both taps of a window per
    channel (faster than a sweep per tap at C = 10)."""
    n, ho, wo, c = grad_out.shape
    h, w = grad_in.shape[1], grad_in.shape[2]
    g3, idx3 = grad_out.reshape(n, ho, wo * c), idx.reshape(n, ho, wo * c)
    gx3 = grad_in.reshape(n, h, w * c)
    zero = grad_in.dtype.type(0)
    for b in range(n):
        for i in range(ho):
            src, tap = g3[b, i], idx3[b, i]
            for r in range(2):
                dst = gx3[b, 2 * i + r]
                for j in range(wo):
                    q, p = j * c, 2 * j * c
                    for k in range(c):
                        v, t = src[q + k], tap[q + k] - 2 * r      # t: 0 or 1 in this row
                        dst[p + k] = v if t == 0 else zero
                        dst[p + c + k] = v if t == 1 else zero


@kernel
def avg_pool_2x2(x, out, inv):
    """out[n, i, j, c] = (((a0 + a1) + a2) + a3) * inv over window (2i.., 2j..), taps
    row-major: the NumPy path's adds in its order (``avg_pool2d_forward``), so the same bits.

    Shape: x (N, H, W, C), out (N, H // 2, W // 2, C), C-contiguous; ``inv`` a scalar of
    their dtype (0.25)."""
    n, ho, wo, c = out.shape
    h, w = x.shape[1], x.shape[2]
    x3, out3 = x.reshape(n, h, w * c), out.reshape(n, ho, wo * c)
    for b in range(n):
        for i in range(ho):
            top, low, dst = x3[b, 2 * i], x3[b, 2 * i + 1], out3[b, i]
            for j in range(wo):
                p, q = 2 * j * c, j * c
                for k in range(c):
                    dst[q + k] = (((top[p + k] + top[p + c + k]) + low[p + k]) + low[p + c + k]) * inv


@kernel
def avg_pool_2x2_scatter(grad_out, inv, grad_in):
    """grad_in[n, 2i + r, 2j + s, c] = grad_out[n, i, j, c] * inv for r, s in {0, 1}; an odd
    last row or column (in no window) is left as it is.

    Shape: grad_out (N, Ho, Wo, C), grad_in (N, H, W, C) with H >= 2 Ho, W >= 2 Wo,
    C-contiguous; ``inv`` a scalar of their dtype."""
    n, ho, wo, c = grad_out.shape
    h, w = grad_in.shape[1], grad_in.shape[2]
    g3, gx3 = grad_out.reshape(n, ho, wo * c), grad_in.reshape(n, h, w * c)
    for b in range(n):
        for i in range(ho):
            src, top, low = g3[b, i], gx3[b, 2 * i], gx3[b, 2 * i + 1]
            for j in range(wo):
                q, p = j * c, 2 * j * c
                for k in range(c):
                    v = src[q + k] * inv
                    top[p + k] = v
                    top[p + c + k] = v
                    low[p + k] = v
                    low[p + c + k] = v


def usable(geo: dict, *arrays: np.ndarray | None) -> bool:
    """Whether the compiled kernels apply: Numba on, a 2x2 / stride-2 pool without padding,
    and C-contiguous arrays (None entries skipped), the first float32 or float64 (other
    layouts stay on the NumPy path rather than compile slow strided variants)."""
    return (geo["kernel"] == (2, 2) and geo["stride"] == (2, 2) and geo["padding"] == (0, 0)
            and geo["covers"] and _jit.enabled()
            and all(a is None or a.flags.c_contiguous for a in arrays)
            and arrays[0].dtype in (np.float32, np.float64))
