"""Compiled row-block convolutions (``_small_channel_conv``'s path for a network's first
layers): the column copy, and a thread's whole share of the forward pass or of the weight
gradient in one call, GEMMs included.

Why the copy: a row block's columns are runs of J*C contiguous input values (12 in LeNet's
first layer, 60 in its second); NumPy copies them through a strided view, and a compiled
element loop is no faster. Here each run is one ``memcpy`` (``_jit_memcpy``): 32 images,
one thread, 21 instead of 56 us (LeNet's 1 -> 10 layer) and 30 instead of 42 us (10 -> 20).

Why one call: in Python a chunk is a dozen calls (the padding, the strided view, the
copy, the product, the output pass), each a return to Python that takes the GIL back.
With two busy threads one often finds it taken and sleeps, and on VMs whose idle vCPUs
halt at once waking it costs 40-90 us (``_jit_blas``). LeNet's layers run in 0.2-0.7 ms
regions, and these waits had made two threads barely faster than one (training step,
batch 64: 4.23 ms on one thread, 3.83 on two). Here a thread's share is one Numba
function without the GIL: the copy, MKL's ``cblas_sgemm`` on the operands the Python path
gives ``_gemm.matmul``, and the compiled output pass (``_jit_epilogue``).

Only the channels-last column order (kh, J, C) of a C-contiguous NHWC input with padding
>= 0; other inputs keep the NumPy path (``usable``).
"""

from __future__ import annotations

import threading

import numpy as np

from . import _jit, _jit_blas, _jit_epilogue
from ._jit import kernel
from ._jit_blas import NO_TRANS, ROW_MAJOR, TRANS
from ._jit_memcpy import copy_run

_lock = threading.Lock()
_compiled: dict = {}     # name -> compiled part


@kernel
def block_columns(x, cols, ho, blocks, pad_top, pad_left, stride_h, stride_w, dilation_h, p, j, kh, ones):
    """cols[(b, y, q), (i, jj, c)] = x[b, y*stride_h + i*dilation_h - pad_top,
    q*p*stride_w + jj - pad_left, c], 0 where that falls in the padding; with ``ones`` the
    last column of each row is 1.

    Shape: x (N, H, W, C) C-contiguous; cols (N*ho*blocks, kh*j*C + ones) C-contiguous,
    ``blocks`` = Wo / p row blocks per output row."""
    n, h, w, c = x.shape
    width = cols.shape[1]
    xf = x.reshape(n * h * w * c)
    cf = cols.reshape(cols.shape[0] * width)
    jc = j * c
    zero = cols.dtype.type(0)
    d = 0
    for b in range(n):
        for y in range(ho):
            for q in range(blocks):
                x0 = q * p * stride_w - pad_left
                lo, hi = max(0, -x0), min(j, w - x0)        # the block's pixels inside the image
                for i in range(kh):
                    row = y * stride_h + i * dilation_h - pad_top
                    if 0 <= row < h and hi > lo:
                        if lo > 0 or hi < j:
                            for e in range(jc):
                                cf[d + e] = zero
                        copy_run(cf, d + lo * c, xf, ((b * h + row) * w + x0 + lo) * c, (hi - lo) * c)
                    else:
                        for e in range(jc):
                            cf[d + e] = zero
                    d += jc
                if ones:
                    cf[d] = 1
                d += width - kh * jc


def _conv_part(x, cols, wb, out, brow, add_bias, clip_low, capped, cap, n0, n1, chunk, ho, blocks,
               pad_top, pad_left, stride_h, stride_w, dilation_h, p, j, kh, sgemm):
    """Images [n0, n1) of the forward pass, ``chunk`` images per column copy: each chunk's
    (rows, P*O) output = columns @ wb, then the bias and ReLU pass.

    Shape: x (N, H, W, C) C-contiguous; cols (chunk*ho*blocks, K') scratch; wb (K', P*O)
    C-contiguous; out (N*ho*blocks, P*O) C-contiguous (the NHWC output); brow (P*O,)."""
    k, po = wb.shape
    per_image = ho * blocks
    cols_ptr, wb_ptr, out_ptr = cols.ctypes.data, wb.ctypes.data, out.ctypes.data
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        m = (c1 - c0) * per_image
        _block_columns(x[c0:c1], cols[:m], ho, blocks, pad_top, pad_left, stride_h, stride_w, dilation_h,
                       p, j, kh, False)
        sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, po, k, np.float32(1.0), cols_ptr, k, wb_ptr, po,
              np.float32(0.0), out_ptr + c0 * per_image * po * 4, po)
        if add_bias or clip_low:
            _bias_clip(out[c0 * per_image:c1 * per_image], brow, add_bias, clip_low, capped, cap)


def _weight_grad_part(x, g, cols, acc, product, n0, n1, chunk, ho, blocks, pad_top, pad_left, stride_h,
                      stride_w, dilation_h, p, j, kh, ones, sgemm):
    """acc = the sum over the chunks of images [n0, n1) of columns_chunk^T @ g_chunk, in
    float32 adds of each chunk's product (``parallel_sum``'s order within a thread).

    Shape: x (N, H, W, C) C-contiguous; g (N*ho*blocks, P*O) C-contiguous; cols
    (chunk*ho*blocks, K' + ones) scratch; acc and product (K' + ones, P*O), product scratch."""
    kc, po = acc.shape
    per_image = ho * blocks
    g_ptr, cols_ptr = g.ctypes.data, cols.ctypes.data
    acc_flat, product_flat = acc.reshape(kc * po), product.reshape(kc * po)
    first = True
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        m = (c1 - c0) * per_image
        _block_columns(x[c0:c1], cols[:m], ho, blocks, pad_top, pad_left, stride_h, stride_w, dilation_h,
                       p, j, kh, ones)
        dst = acc if first else product
        # dst (K', P*O) = columns^T (read transposed) @ g_chunk (m, P*O).
        sgemm(ROW_MAJOR, TRANS, NO_TRANS, kc, po, m, np.float32(1.0), cols_ptr, kc,
              g_ptr + c0 * per_image * po * 4, po, np.float32(0.0), dst.ctypes.data, po)
        if not first:
            for e in range(kc * po):
                acc_flat[e] += product_flat[e]
        first = False


def _kernel(name: str):
    """The compiled part ``name`` ("conv" or "weight_grad"), built on first use."""
    global _block_columns, _bias_clip
    compiled = _compiled.get(name)
    if compiled is None:
        with _lock:
            _block_columns = block_columns.dispatcher()
            _bias_clip = _jit_epilogue.bias_clip.dispatcher()
            compiled = _compiled.get(name)
            if compiled is None:
                fn = {"conv": _conv_part, "weight_grad": _weight_grad_part}[name]
                compiled = _compiled[name] = _jit._numba.njit(nogil=True, cache=True)(fn)
    return compiled


def copy_usable(x: np.ndarray, pads, channels_first: bool) -> bool:
    """Whether ``block_columns`` takes this input: compiled kernels on, channels-last
    columns, a C-contiguous NHWC input, no negative (cropping) padding."""
    return (not channels_first and _jit.enabled() and x.flags.c_contiguous and x.dtype.kind == "f"
            and min(pads) >= 0)


def usable(x: np.ndarray, pads, channels_first: bool) -> bool:
    """Whether the one-call parts (``conv``, ``weight_grad``) can run here and now: the
    copy usable, float32, and MKL callable from compiled code (``_jit_blas.available``)."""
    return copy_usable(x, pads, channels_first) and _jit_blas.fits(x) and _jit_blas.available()


def _geometry(geo: dict, p: int):
    (sh, sw), dh = geo["stride"], geo["dilation"][0]
    ho, wo = geo["out_hw"]
    return ho, wo // p, geo["pads"][0], geo["pads"][2], sh, sw, dh


def columns(x, cols, geo: dict, p: int, j: int, ones: bool) -> None:
    """Fill ``cols`` (rows, K' + ones) with the row-block columns of the NHWC chunk ``x``
    (after ``copy_usable``)."""
    ho, blocks, t, l, sh, sw, dh = _geometry(geo, p)
    block_columns(x, cols, ho, blocks, t, l, sh, sw, dh, p, j, geo["kernel"][0], ones)


def conv(x, cols, wb, out, brow, relu_limits, geo: dict, p: int, j: int, start: int, stop: int,
         chunk: int) -> None:
    """Images [start, stop) of a row-block forward pass (after ``usable``).

    Args:
        x: NHWC input (N, H, W, C), C-contiguous float32; cols: (chunk*Ho*Wo/P, K') scratch;
        wb: the banded (K', P*O) weight, C-contiguous; out: the NHWC output as
        (N*Ho*Wo/P, P*O), C-contiguous; brow: the bias tiled P times, or None;
        relu_limits: ``_epilogue.relu_limits`` of the fused ReLU; geo, p, j: the layer's
        geometry, block width and block span.
    """
    ho, blocks, t, l, sh, sw, dh = _geometry(geo, p)
    clip_low, cap = relu_limits
    bias = out[0, :0] if brow is None else brow
    _kernel("conv")(x, cols, wb, out, bias, brow is not None, clip_low, cap < np.inf, float(cap), start, stop,
                    chunk, ho, blocks, t, l, sh, sw, dh, p, j, geo["kernel"][0], _jit_blas.sgemm())


def weight_grad(x, g, cols, geo: dict, p: int, j: int, ones: bool, start: int, stop: int, chunk: int,
                product: np.ndarray) -> np.ndarray:
    """The (K' + ones, P*O) partial of images [start, stop) of a row-block weight gradient
    (after ``usable``): a fresh array.

    Args:
        x: NHWC input (N, H, W, C), C-contiguous float32; g: the NHWC upstream gradient as
        (N*Ho*Wo/P, P*O), C-contiguous; cols: (chunk*Ho*Wo/P, K' + ones) scratch; product:
        (K' + ones, P*O) scratch; ones: a column of ones (the bias gradient's row).
    """
    ho, blocks, t, l, sh, sw, dh = _geometry(geo, p)
    acc = np.empty(product.shape, x.dtype)
    _kernel("weight_grad")(x, g, cols, acc, product, start, stop, chunk, ho, blocks, t, l, sh, sw, dh, p, j,
                           geo["kernel"][0], ones, _jit_blas.sgemm())
    return acc
