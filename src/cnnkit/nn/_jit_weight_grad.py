"""A thread's share of a convolution's weight gradient in one compiled call, GEMMs included.

    dL/dW (O, kh*kw*C) = sum over batch chunks of g_chunk^T (O, M) @ columns_chunk (M, kh*kw*C)

Why: ``_conv_kernels.gemm_conv_param_grads`` runs each batch chunk as calls from Python
(the im2col copy, the product, the add into the thread's partial gradient), each a return
to Python that takes the GIL back; a thread that finds it taken by the other sleeps, and on
VMs whose idle vCPUs halt at once waking it costs 40-90 us (see ``_jit_blas``). Here the
same steps run in one Numba function without the GIL: the compiled im2col
(``_jit_conv.columns``), MKL's ``cblas_sgemm`` with the operands the Python path gives it,
and the same float32 adds of each chunk's product into the partial gradient. Cut into the
same chunks, the result is the Python path's bit for bit (the tests compare); it works in
smaller chunks (``_conv_kernels.COMPILED_WGRAD_CHUNK_BYTES``), which change the order of
the sum over the batch, not its float32 accuracy.

Used by ``_conv_kernels.gemm_conv_param_grads`` for ungrouped layers when ``usable`` and
``_jit_blas.available``.
"""

from __future__ import annotations

import threading

import numpy as np

from . import _jit, _jit_blas, _jit_conv
from ._buffers import workspace
from ._jit_blas import NO_TRANS, ROW_MAJOR, TRANS

_lock = threading.Lock()
_compiled = None         # the compiled ``_part``


def _part(x, g, cols, acc, product, n0, n1, chunk, pad_top, pad_left, stride_h, stride_w,
          dilation_h, dilation_w, sgemm):
    """acc = the sum over the chunks of images [n0, n1) of g_chunk^T @ columns_chunk.

    Shape: x (N, H, W, C) any strides; g (N, Ho, Wo, O) C-contiguous; cols
    (chunk, Ho, Wo, kh, kw, C) C-contiguous scratch; acc and product (O, kh*kw*C)
    C-contiguous, product scratch."""
    n, ho, wo, o = g.shape
    k = acc.shape[1]
    g_ptr, cols_ptr = g.ctypes.data, cols.ctypes.data
    acc_flat, product_flat = acc.reshape(o * k), product.reshape(o * k)
    first = True
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        nb = c1 - c0
        m = nb * ho * wo
        _columns(x[c0:c1], cols[:nb], pad_top, pad_left, stride_h, stride_w, dilation_h, dilation_w)
        dst = acc if first else product
        # dst (O, K) = g_chunk^T: g_chunk (M, O) read transposed, @ columns (M, K).
        sgemm(ROW_MAJOR, TRANS, NO_TRANS, o, k, m, np.float32(1.0), g_ptr + c0 * ho * wo * o * 4, o,
              cols_ptr, k, np.float32(0.0), dst.ctypes.data, k)
        if not first:
            for e in range(o * k):
                acc_flat[e] += product_flat[e]
        first = False


def _kernel():
    global _compiled, _columns
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _columns = _jit_conv.columns.dispatcher()
                _compiled = _jit._numba.njit(nogil=True, cache=True)(_part)
    return _compiled


def usable(g: np.ndarray, xt: np.ndarray) -> bool:
    """Whether ``weight_grad`` can take these operands: float32, a C-contiguous upstream
    gradient, sizes within 32-bit ints. Whether MKL can be called here is asked inside the
    parallel region, where the call runs (``_jit_blas.available``)."""
    return _jit_blas.fits(g, xt) and g.flags.c_contiguous


def weight_grad(g, xt, weight_shape, geo: dict, start: int, stop: int, chunk: int) -> np.ndarray:
    """The (O, kh*kw*C) weight-gradient partial of images [start, stop) of an ungrouped
    convolution, ``chunk`` images per im2col copy (after ``usable``).

    Args:
        g: NHWC upstream gradient (N, Ho, Wo, O), C-contiguous float32.
        xt: NHWC input (N, H, W, C); weight_shape: (O, C, kh, kw); geo: the layer's geometry.

    Returns:
        A fresh (O, kh*kw*C) array, columns ordered (i, j, c) like im2col's.
    """
    o, c, kh, kw = weight_shape
    ho, wo = geo["out_hw"]
    (sh, sw), (dh, dw) = geo["stride"], geo["dilation"]
    t, _, l, _ = geo["pads"]
    k = kh * kw * c
    cols = workspace.get("conv_cols", (min(chunk, stop - start), ho, wo, kh, kw, c), xt.dtype)
    product = workspace.get("wgrad_product", (o, k), xt.dtype)
    acc = np.empty((o, k), xt.dtype)
    _kernel()(xt, g, cols, acc, product, start, stop, chunk, t, l, sh, sw, dh, dw, _jit_blas.sgemm())
    return acc
