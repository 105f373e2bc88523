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
