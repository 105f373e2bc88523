"""Compiled copies and adds of the convolution kernels, the optional Numba path of ``_im2col``
and ``_conv_kernels``.

- ``columns`` and ``row_columns``: im2col's columns and the row-tap convolution's kernel-row
  columns, copied straight from the unpadded NHWC input. NumPy first copies the input into a
  padded buffer, then copies from it with inner loops of kw*C values; here it is one sweep,
  zeros written where a tap falls in the padding. 32 images, one thread (NumPy / compiled):
  3x3 im2col of 14x14x64 0.83 / 0.68 ms, of 28x28x32 1.74 / 1.45 ms; in the network the
  gain is larger, as each NumPy call is one more GIL hand-over between the pool's threads.
- ``add_row_taps``: ``_row_tap_input_grad`` leaves, per image, row columns R (Hp, Wo, kw, C):
  kernel row products already summed over the vertical taps. What is left is to add each
  horizontal tap j's (Wo, C) block into the image row at columns xo*sw + j*dw - l. In NumPy
  that is one fill and kw strided adds whose inner loops run over C values only (10 in
  LeNet's second layer); here it is one sweep per image row. Same adds in the same order
  (tap j ascending, starting from 0).
- ``add_taps``: col2im, the adjoint of ``columns``: every column entry added back onto the
  input pixel it was copied from. NumPy adds one strided block per tap, each a pass over
  the whole gradient with inner loops of C values (10 in LeNet's second layer); here one
  sweep per image and tap, the image's gradient in cache. Same adds in the same order (taps
  row-major, starting from 0).

All four give the NumPy path's bits. See ``_jit`` for when they run.
"""

from __future__ import annotations

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
    unpadded input.

    Shape: x (N, H, W, C), any strides; rows (N, Hp, Wo, kw, C), C-contiguous."""
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


@kernel
def columns(x, cols, pad_top, pad_left, stride_h, stride_w, dilation_h, dilation_w):
    """cols[b, yo, xo, i, j, :] = x[b, yo*stride_h + i*dilation_h - pad_top,
    xo*stride_w + j*dilation_w - pad_left, :], 0 where that pixel lies in the padding:
    ``_im2col.im2col`` (one group) straight from the unpadded input.

    Shape: x (N, H, W, C), any strides; cols (N, Ho, Wo, kh, kw, C), C-contiguous."""
    n, ho, wo, kh, kw, c = cols.shape
    h, w = x.shape[1], x.shape[2]
    zero = cols.dtype.type(0)
    for b in range(n):
        for yo in range(ho):
            for xo in range(wo):
                for i in range(kh):
                    y = yo * stride_h + i * dilation_h - pad_top
                    for j in range(kw):
                        ix = xo * stride_w + j * dilation_w - pad_left
                        if 0 <= y < h and 0 <= ix < w:
                            for k in range(c):
                                cols[b, yo, xo, i, j, k] = x[b, y, ix, k]
                        else:
                            for k in range(c):
                                cols[b, yo, xo, i, j, k] = zero


@kernel
def add_taps(cols, grad_in, pad_top, pad_left, stride_h, stride_w, dilation_h, dilation_w):
    """grad_in[b, y, x, :] = the sum of cols[b, yo, xo, i, j, :] over the output pixels and
    taps that read input pixel (y, x): yo*stride_h + i*dilation_h - pad_top == y, likewise
    along x; taps in ascending (i, j) order, starting from 0 (``_im2col.col2im``'s order).

    Shape: cols (N, Ho, Wo, kh, kw, C), grad_in (N, H, W, C), both C-contiguous."""
    n, ho, wo, kh, kw, c = cols.shape
    h, w = grad_in.shape[1], grad_in.shape[2]
    zero = grad_in.dtype.type(0)
    for b in range(n):
        dst = grad_in[b]
        for y in range(h):
            for x in range(w):
                for k in range(c):
                    dst[y, x, k] = zero
        for i in range(kh):
            for j in range(kw):
                for yo in range(ho):
                    y = yo * stride_h + i * dilation_h - pad_top
                    if y < 0 or y >= h:
                        continue
                    for xo in range(wo):
                        x = xo * stride_w + j * dilation_w - pad_left
                        if 0 <= x < w:
                            for k in range(c):
                                dst[y, x, k] += cols[b, yo, xo, i, j, k]
