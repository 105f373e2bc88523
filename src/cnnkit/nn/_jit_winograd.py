"""Compiled Winograd F(2x2, 3x3) tile transforms, the optional Numba path of ``_winograd``.

The NumPy path copies the overlapping 4x4 input tiles into a scratch array, then
transforms them with one GEMM by kron(B^T, B^T) (16 multiply-adds per value where the
transform needs 2 adds), and does the same on the way out with kron(A^T, A^T) plus a
scatter copy and the bias / ReLU pass. Here each transform is a loop that reads its tile
straight from the input (zero outside: no padded copy) and applies B^T d B as the adds
they are; the output transform adds the bias and clips in the same sweep. Only the 16
channel GEMMs stay. One thread, 32 images, 3x3 pad 1, ms (NumPy Winograd / this):
64 -> 64 at 14x14 3.72 / 2.78; 32 -> 64 at 14x14 2.53 / 1.46. The VGG-style net, batch 64,
2 threads, same process (NumPy kernels / compiled ones, this and the pooling): inference
40.2 -> 37.4 ms, training 142.1 -> 129.5 ms. Where Winograd is used is unchanged
(``_winograd.MIN_CHANNEL_PRODUCT``, measured there).

Rounding: the adds run in another order than the GEMM's, so results differ from the NumPy
Winograd path by float32 rounding (tests compare both with float64). See ``_jit`` for when
this runs.
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel


@kernel
def input_tiles(x, pad_top, pad_left, tiles_h, tiles_w, perm, v):
    """v[perm[4r + s], tile, :] = (B^T d B)[r, s, :] for every 4x4 input tile d at rows
    2ti - pad_top.., columns 2tj - pad_left.. (zero outside x), tile = (n*Th + ti)*Tw + tj.
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].

    Shape: x (N, H, W, C); v (16, N*Th*Tw, C); perm (16,) int (identity, or the flipped
    kernel's positions, see ``_winograd._consts``)."""
    n, h, w, c = x.shape
    d = np.empty((4, 4, c), dtype=v.dtype)
    zero = v.dtype.type(0)
    for b in range(n):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                tile = (b * tiles_h + ti) * tiles_w + tj
                for r in range(4):
                    y = 2 * ti + r - pad_top
                    for s in range(4):
                        xx = 2 * tj + s - pad_left
                        if 0 <= y < h and 0 <= xx < w:
                            for k in range(c):
                                d[r, s, k] = x[b, y, xx, k]
                        else:
                            for k in range(c):
                                d[r, s, k] = zero
                for s in range(4):                 # columns of B^T d, in place
                    for k in range(c):
                        d0, d1, d2, d3 = d[0, s, k], d[1, s, k], d[2, s, k], d[3, s, k]
                        d[0, s, k], d[1, s, k], d[2, s, k], d[3, s, k] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
                for r in range(4):                 # rows of (B^T d) B, into v
                    for k in range(c):
                        e0, e1, e2, e3 = d[r, 0, k], d[r, 1, k], d[r, 2, k], d[r, 3, k]
                        v[perm[4 * r], tile, k] = e0 - e2
                        v[perm[4 * r + 1], tile, k] = e1 + e2
                        v[perm[4 * r + 2], tile, k] = e2 - e1
                        v[perm[4 * r + 3], tile, k] = e1 - e3


@kernel
def output_tiles(m, bias, relu, cap, perm, out, tiles_h, tiles_w):
    """out[n, 2ti + r, 2tj + q, :] = (A^T M A)[r, q, :] + bias with M[p] = m[perm[p], tile, :],
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], then clipped below at 0 when ``relu`` and above at
    ``cap`` (inf: no cap; 6: a ReLU6); outputs past Ho, Wo (odd sizes) dropped.

    Shape: m (16, N*Th*Tw, O); bias (O,) (zeros for none); out (N, Ho, Wo, O)."""
    n, ho, wo, o = out.shape
    rows = np.empty((2, 4, o), dtype=m.dtype)
    zero = m.dtype.type(0)
    for b in range(n):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                tile = (b * tiles_h + ti) * tiles_w + tj
                for s in range(4):                 # A^T M: two rows
                    for k in range(o):
                        a0, a1 = m[perm[s], tile, k], m[perm[4 + s], tile, k]
                        a2, a3 = m[perm[8 + s], tile, k], m[perm[12 + s], tile, k]
                        rows[0, s, k] = a0 + a1 + a2
                        rows[1, s, k] = a1 - a2 - a3
                for r in range(2):
                    y = 2 * ti + r
                    if y >= ho:
                        continue
                    for q in range(2):
                        xx = 2 * tj + q
                        if xx >= wo:
                            continue
                        dst = out[b, y, xx]
                        for k in range(o):
                            if q == 0:
                                val = rows[r, 0, k] + rows[r, 1, k] + rows[r, 2, k] + bias[k]
                            else:
                                val = rows[r, 1, k] - rows[r, 2, k] - rows[r, 3, k] + bias[k]
                            if relu and val < zero:
                                val = zero
                            dst[k] = cap if val > cap else val
