"""A thread's share of a convolution's input gradient by col2im in one compiled call, the
GEMM included:

    columns (M, kh*kw*C) = g_chunk (M, O) @ W (O, kh*kw*C);   dL/dx = col2im(columns)

Why: ``_conv_kernels.gemm_conv_input_grad`` runs each batch chunk of a few-channel layer
(LeNet's second layer: 10 input channels) as calls from Python: the product, the compiled
col2im (``_jit_conv.add_taps``), the folded ReLU mask (``_jit_epilogue``). Each returns to
Python and takes the GIL back, and a thread that finds it taken sleeps; on VMs whose idle
vCPUs halt at once waking it costs 40-90 us (``_jit_blas``). Here the same steps run in
one Numba function without the GIL: MKL's ``cblas_sgemm`` on the operands the Python path
gives ``_gemm.matmul``, then the same compiled adds and mask. In the same chunks the
result is the Python path's bit for bit (the tests compare).

Used by ``gemm_conv_input_grad`` for ungrouped layers that take the compiled col2im, when
``usable`` and ``_jit_blas.available`` (asked inside the parallel region).
"""

from __future__ import annotations

import threading

import numpy as np

from . import _jit, _jit_blas, _jit_conv, _jit_epilogue
from ._jit_blas import NO_TRANS, ROW_MAJOR

_lock = threading.Lock()
_compiled = None         # the compiled ``_part``


def _part(g, w, cols, gx, mask, use_mask, n0, n1, chunk, pad_top, pad_left, stride_h, stride_w, dilation_h,
          dilation_w, sgemm):
    """gx[n0:n1] = col2im(g_chunk @ w), times ``mask > 0`` when ``use_mask``, ``chunk``
    images at a time.

    Shape: g (N, Ho, Wo, O) C-contiguous; w (O, kh*kw*C) C-contiguous; cols
    (chunk, Ho, Wo, kh, kw, C) C-contiguous scratch; gx and mask (N, H, W, C) C-contiguous
    (mask read when ``use_mask``)."""
    n, ho, wo, o = g.shape
    k = w.shape[1]
    image = gx.shape[1] * gx.shape[2] * gx.shape[3]
    g_ptr, w_ptr, cols_ptr = g.ctypes.data, w.ctypes.data, cols.ctypes.data
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        nb = c1 - c0
        sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, nb * ho * wo, k, o, np.float32(1.0), g_ptr + c0 * ho * wo * o * 4, o,
              w_ptr, k, np.float32(0.0), cols_ptr, k)
        _add_taps(cols[:nb], gx[c0:c1], pad_top, pad_left, stride_h, stride_w, dilation_h, dilation_w)
        if use_mask:
            _multiply_by_positive(gx[c0:c1].reshape(nb * image), mask[c0:c1].reshape(nb * image))


def _kernel():
    global _compiled, _add_taps, _multiply_by_positive
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _add_taps = _jit_conv.add_taps.dispatcher()
                _multiply_by_positive = _jit_epilogue.multiply_by_positive.dispatcher()
                _compiled = _jit._numba.njit(nogil=True, cache=True)(_part)
    return _compiled


def usable(g: np.ndarray, gx: np.ndarray, relu_mask: np.ndarray | None) -> bool:
    """Whether ``input_grad`` can take these operands: float32, C-contiguous, sizes within
    32-bit ints. Whether MKL can be called here is asked inside the parallel region, where
    the call runs (``_jit_blas.available``)."""
    return (_jit.enabled() and _jit_blas.fits(g, gx) and g.flags.c_contiguous and gx.flags.c_contiguous
            and (relu_mask is None or (relu_mask.dtype == np.float32 and relu_mask.flags.c_contiguous
                                       and relu_mask.shape == gx.shape)))


def input_grad(g, w, geo: dict, gx, relu_mask, start: int, stop: int, chunk: int, cols) -> None:
    """Images [start, stop) of the col2im input gradient into ``gx`` (after ``usable``).

    Args:
        g: NHWC upstream gradient (N, Ho, Wo, O); w: the (O, kh*kw*C) weight matrix,
        C-contiguous, columns (i, j, c) like im2col's; geo: the layer's geometry;
        gx: the NHWC input gradient (N, H, W, C); relu_mask: gx-shaped, or None;
        chunk: images per product; cols: (chunk, Ho, Wo, kh, kw, C) scratch.
    """
    (sh, sw), (dh, dw) = geo["stride"], geo["dilation"]
    t, _, l, _ = geo["pads"]
    mask = gx[:0] if relu_mask is None else relu_mask
    _kernel()(g, w, cols, gx, mask, relu_mask is not None, start, stop, chunk, t, l, sh, sw, dh, dw,
              _jit_blas.sgemm())
