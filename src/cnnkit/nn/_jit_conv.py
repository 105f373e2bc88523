"""Compiled step of the row-tap input gradient, the optional Numba path of ``_conv_kernels``.

``_row_tap_input_grad`` leaves, per image, row columns R (Hp, Wo, kw, C): kernel row
products already summed over the vertical taps. What is left is to add each horizontal tap
j's (Wo, C) block into the image row at columns xo*sw + j*dw - l. In NumPy that is one fill
and kw strided adds whose inner loops run over C values only (10 in LeNet's second layer);
here it is one sweep per image row. Same adds in the same order (tap j ascending, starting
from 0), so the same bits as the NumPy path. See ``_jit`` for when this runs.
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel


@kernel
def add_row_taps(rows, grad_in, pad_top, pad_left, stride_w, dilation_w):
    """grad_in[b, y, x, :] = sum over (xo, j) with xo*stride_w + j*dilation_w - pad_left == x
    of rows[b, y + pad_top, xo, j, :], adding in ascending j (0 where nothing lands).

    Shape: rows (N, Hp, Wo, kw, C), grad_in (N, H, W, C), both C-contiguous."""
    n, hp, wo, kw, c = rows.shape
    h, w = grad_in.shape[1], grad_in.shape[2]
    rows3 = rows.reshape(n, hp, wo * kw * c)
    gx3 = grad_in.reshape(n, h, w * c)
    zero = grad_in.dtype.type(0)
    for b in range(n):
        for y in range(h):
            dst = gx3[b, y]
            for e in range(w * c):
                dst[e] = zero
            r = y + pad_top                       # this input row inside the padded rows
            if r < 0 or r >= hp:
                continue
            src = rows3[b, r]
            for j in range(kw):
                for xo in range(wo):
                    x = xo * stride_w + j * dilation_w - pad_left
                    if 0 <= x < w:
                        s, d = (xo * kw + j) * c, x * c
                        for k in range(c):
                            dst[d + k] += src[s + k]


@kernel
def row_columns(x, rows, pad_top, pad_left, stride_w, dilation_w):
    """rows[b, r, xo, j, :] = x[b, r - pad_top, xo*stride_w + j*dilation_w - pad_left, :],
    0 where that pixel lies in the padding: ``_im2col.im2col_rows`` straight from the
    unpadded input (no padded copy first, and one sweep instead of NumPy's inner loops of
    kw*C values). A copy, so the same bits.

    Shape: x (N, H, W, C) with contiguous channels; rows (N, Hp, Wo, kw, C), C-contiguous."""
    n, hp, wo, kw, c = rows.shape
    h, w = x.shape[1], x.shape[2]
    rows3 = rows.reshape(n, hp, wo * kw * c)
    zero = rows.dtype.type(0)
    for b in range(n):
        for r in range(hp):
            dst = rows3[b, r]
            y = r - pad_top
            if y < 0 or y >= h:
                for e in range(wo * kw * c):
                    dst[e] = zero
                continue
            src = x[b, y]
            for xo in range(wo):
                for j in range(kw):
                    d = (xo * kw + j) * c
                    ix = xo * stride_w + j * dilation_w - pad_left
                    if 0 <= ix < w:
                        for k in range(c):
                            dst[d + k] = src[ix, k]
                    else:
                        for k in range(c):
                            dst[d + k] = zero
