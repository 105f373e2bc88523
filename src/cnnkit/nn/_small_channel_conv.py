"""Convolutions with few input and output channels (a network's first layers).

Why a path of its own: with C = 1 and O = 10, plain im2col gives a GEMM (N*Ho*Wo, kh*kw)
@ (kh*kw, O) whose K and N are both tiny; OpenBLAS then runs far below its peak (the
columns are streamed for 10 outputs each) and channels-last columns copy runs of 1 value.

Row blocks: here every GEMM row covers P neighbouring output pixels of one image row
(P divides Wo). Its columns are the input patch under all P receptive fields,
kh x J pixels with J = (P-1)*sw + (kw-1)*dw + 1, and the weight becomes a banded
(kh*J*C, P*O) matrix (zeros where a tap falls outside pixel p's window). The product
(N*Ho*Wo/P, P*O) is then already the NHWC output (row (n, y, block), columns (p, o)),
no transpose needed. Costs J/kw times the multiply-adds of plain im2col, but the GEMM
is P times wider and the columns are ~kw*P/J times smaller (runs of J*C values instead
of kw*C). Measured, 1 thread, batch 32: LeNet conv1 (1->10, 5x5) 0.82 -> 0.27 ms with
P = 4; LeNet conv2 (10->20, 5x5, 8x8 out) 0.37 -> 0.28 ms with P = 2.

Used by ``_conv_kernels`` (groups == 1) when ``small_c_block`` says so: few input channels
(C <= ``SMALL_C``, where channels-last columns copy runs of 1-3 values) or a block
width P > 1 (few output channels). The weight gradient is the same GEMM transposed:
(K', M') @ (M', P*O), then the P diagonal bands of the (K', P*O) result are summed.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _gemm, _jit_block_conv, _recycle
from ._buffers import batch_chunks, workspace
from ._epilogue import finish_output, relu_limits
from ._im2col import im2col_channels_first, nchw, pad_nhwc
from ._parallel import parallel_for, parallel_sum, sum_chunks


#: Target size of one chunk's column matrix.
CHUNK_BYTES = 8 << 20
#: ... in the compiled one-call path (``_jit_block_conv``), where a chunk costs no return to
#: Python and smaller columns stay in cache.
COMPILED_CHUNK_BYTES = 1 << 20
#: Row blocks have P <= MAX_BLOCK output pixels (the extra multiply-adds grow with P: J / kw) ...
MAX_BLOCK = 8
#: ... and the GEMM's N = P * O is at most this for inputs with many channels (the
#: alternative is channels-last im2col; measured on 10->20 5x5 and 16->16 5x5: P = 2 best) ...
BLOCK_N = 40
#: ... or this for few channels, where they must also give P >= MIN_FEW_BLOCK: the
#: channels-first columns are hard to beat unless O is tiny (measured, batch 32, 1 thread:
#: 1->10 5x5: 0.51 -> 0.31 ms with P = 8; 1->20 3x3 and 1->16 5x5: P = 2 .. 4 slower).
FEW_BLOCK_N = 80
MIN_FEW_BLOCK = 5


def _largest_block(wo: int, o: int, limit: int) -> int:
    """The largest divisor P of Wo with P <= MAX_BLOCK and P * O <= limit (at least 1)."""
    best = 1
    for p in range(2, min(MAX_BLOCK, wo) + 1):
        if wo % p == 0 and p * o <= limit:
            best = p
    return best


def small_c_block(c: int, o: int, wo: int, small_c: int):
    """How ``small_c_kernel`` would run a groups == 1 convolution with C input and O output
    channels, Wo output columns: None = not at all (use channels-last im2col), 1 =
    channels-first columns (C <= small_c), P >= 2 = row blocks of P pixels."""
    if c <= small_c:
        p = _largest_block(wo, o, FEW_BLOCK_N)
        return p if p >= MIN_FEW_BLOCK else 1
    p = _largest_block(wo, o, BLOCK_N)
    return p if p >= 2 else None


def _plan(xt: np.ndarray, weight_shape, geo: dict, p: int):
    """(J, channels_first) of a row-block convolution. ``channels_first``: order the
    columns (C, kh, J) when the input's width axis is the contiguous one (an NCHW batch
    straight from the data), so that the copied runs are J pixels of one channel; else
    (kh, J, C)."""
    o, c, kh, kw = weight_shape
    j = (p - 1) * geo["stride"][1] + (kw - 1) * geo["dilation"][1] + 1
    channels_first = c > 1 and abs(xt.strides[2]) < abs(xt.strides[3])
    return j, channels_first


def _block_weight(weight: np.ndarray, p: int, j: int, channels_first: bool, geo: dict) -> np.ndarray:
    """The banded (K', P*O) GEMM operand: row (i, jj, c) (or (c, i, jj)), column (q, o)
    holds weight[o, c, i, t] where jj = q*sw + t*dw, and 0 elsewhere."""
    o, c, kh, kw = weight.shape
    sw, dw = geo["stride"][1], geo["dilation"][1]
    span = (kw - 1) * dw + 1
    wb = np.zeros((kh, j, c, p, o), dtype=weight.dtype)
    taps = weight.transpose(2, 3, 1, 0)                                  # (kh, kw, C, O)
    for q in range(p):
        wb[:, q * sw: q * sw + span: dw, :, q] = taps
    if channels_first:
        wb = np.ascontiguousarray(wb.transpose(2, 0, 1, 3, 4))           # (C, kh, J, P, O)
    return wb.reshape(-1, p * o)


def _fold_block_grad(acc: np.ndarray, weight_shape, p: int, j: int, channels_first: bool,
                     geo: dict) -> np.ndarray:
    """Adjoint of ``_block_weight``: sum the P bands of a (K', P*O) gradient into (O, C, kh, kw)."""
    o, c, kh, kw = weight_shape
    sw, dw = geo["stride"][1], geo["dilation"][1]
    span = (kw - 1) * dw + 1
    if channels_first:
        a = acc.reshape(c, kh, j, p, o).transpose(1, 2, 0, 3, 4)          # (kh, J, C, P, O) view
    else:
        a = acc.reshape(kh, j, c, p, o)
    gw = a[:, 0: span: dw, :, 0].copy()
    for q in range(1, p):
        gw += a[:, q * sw: q * sw + span: dw, :, q]
    return np.ascontiguousarray(gw.transpose(3, 2, 0, 1))


def block_columns(x: np.ndarray, geo: dict, p: int, j: int, channels_first: bool,
                  ones: bool = False) -> np.ndarray:
    """Row-block columns of an NHWC batch chunk ``x`` (any strides): a scratch array
    (N*Ho*Wo/P, K') whose row (n, y, b) holds the input patch read by output pixels
    (n, y, b*P .. b*P + P-1), ordered (kh, J, C), or (C, kh, J) if ``channels_first``.
    ``ones``: one more column of ones (K' + 1), for the bias gradient."""
    n, c = x.shape[0], x.shape[3]
    (kh, _), (sh, sw), (dh, _) = geo["kernel"], geo["stride"], geo["dilation"]
    ho, wo = geo["out_hw"]
    rows, k = n * ho * (wo // p), c * kh * j
    if _jit_block_conv.copy_usable(x, geo["pads"], channels_first):
        cols = workspace.get("conv_cols", (rows, k + ones), x.dtype)
        _jit_block_conv.columns(x, cols, geo, p, j, ones)
        return cols
    xp = pad_nhwc(x, geo["pads"], "small_c_pad", channels_first)
    s0, s1, s2, s3 = xp.strides
    if channels_first:
        shape, strides = (n, ho, wo // p, c, kh, j), (s0, s1 * sh, s2 * sw * p, s3, s1 * dh, s2)
    else:
        shape, strides = (n, ho, wo // p, kh, j, c), (s0, s1 * sh, s2 * sw * p, s1 * dh, s2, s3)
    cols = workspace.get("conv_cols", (rows, k + ones), x.dtype)
    np.copyto(cols[:, :k].reshape(shape), as_strided(xp, shape, strides, writeable=False))
    if ones:
        cols[:, k] = 1
    return cols


def small_c_kernel(weight, geo, bias=None, block: int = 1, relu: bool = False, xt=None):
    """The forward kernel: a function NHWC input (N, H, W, C) (or a batch chunk) -> fresh
    NHWC output (N, Ho, Wo, O), its GEMM operand prepared once. ``block`` from
    ``small_c_block``: 1 = channels-first columns, P >= 2 = row blocks of P pixels;
    ``relu``: a fused ReLU on the output (see ``_epilogue``). Why prepared: ``_conv_pool``
    calls the kernel once per chunk in every thread; rebuilding the banded weight each
    time cost LeNet's inference a zero-filled allocation and a strided fill per thread and
    layer, under the GIL. ``xt``: the NHWC input the kernel will see (or chunks of it),
    to prepare the operand for its layout now, before the threads start."""
    if block == 1:
        return _cf_kernel(weight, geo, bias, relu)
    o = weight.shape[0]
    ho, wo = geo["out_hw"]
    p = block
    brow = None if bias is None else np.tile(bias, p)
    prepared = {}            # channels_first -> banded weight; same value if two threads race
    if xt is not None:
        j, cf = _plan(xt, weight.shape, geo, p)
        prepared[cf] = _block_weight(weight, p, j, cf, geo)

    def conv(xt):
        n = xt.shape[0]
        j, cf = _plan(xt, weight.shape, geo, p)
        wb = prepared.get(cf)
        if wb is None:
            wb = prepared[cf] = _block_weight(weight, p, j, cf, geo)          # (K', P*O)
        out = _recycle.empty((n, ho, wo, o), dtype=xt.dtype)
        per_sample = ho * (wo // p) * wb.shape[0] * xt.itemsize

        def run(start, stop):
            if _jit_block_conv.usable(xt, geo["pads"], cf):
                chunk = max(1, COMPILED_CHUNK_BYTES // per_sample)
                cols = workspace.get("conv_cols", (min(chunk, stop - start) * ho * (wo // p), wb.shape[0]), xt.dtype)
                _jit_block_conv.conv(xt, cols, wb, out.reshape(-1, p * o), brow, relu_limits(relu), geo, p, j,
                                     start, stop, chunk)
                return
            for n0, n1 in batch_chunks(start, stop, per_sample, CHUNK_BYTES):
                cols = block_columns(xt[n0:n1], geo, p, j, cf)
                dst = out[n0:n1].reshape(cols.shape[0], p * o)
                _gemm.matmul(cols, wb, out=dst)
                finish_output(dst, brow, relu)

        parallel_for(n, run, n * per_sample)
        return out

    return conv


def small_c_weight_grad(g, xt, weight_shape, geo, block: int = 1, bias_grad: bool = False):
    """d loss / d weight (O, C, kh, kw) from the C-contiguous NHWC upstream gradient g;
    ``block`` as for ``small_c_kernel``. With ``bias_grad``: (weight grad, bias grad (O,)).

    The bias gradient comes from the same GEMM, as one more row of ones in the columns:
    g is read once (a separate sum over g costs a pass over it, ~1 ms for VGG's first
    layer at batch 64, done serially after the threads)."""
    if block == 1:
        acc = _cf_weight_grad(g, xt, weight_shape, geo, bias_grad)      # (K (+1), O)
        gw = np.ascontiguousarray(acc[: acc.shape[0] - bias_grad].T).reshape(weight_shape)
        return (gw, acc[-1].copy()) if bias_grad else gw
    n = xt.shape[0]
    o = weight_shape[0]
    ho, wo = geo["out_hw"]
    p = block
    j, cf = _plan(xt, weight_shape, geo, p)
    per_sample = ho * (wo // p) * weight_shape[1] * weight_shape[2] * j * xt.itemsize

    def part(n0, n1):
        cols = block_columns(xt[n0:n1], geo, p, j, cf, ones=bias_grad)
        return _gemm.matmul(cols.T, g[n0:n1].reshape(cols.shape[0], p * o))  # (K' (+1), P*O)

    if _jit_block_conv.usable(xt, geo["pads"], cf) and g.flags.c_contiguous:
        acc = _compiled_weight_grad(g.reshape(-1, p * o), xt, geo, p, j, bias_grad, per_sample, part)
    else:
        acc = parallel_sum(n, part, per_sample, CHUNK_BYTES)
    k = acc.shape[0] - bias_grad
    gw = _fold_block_grad(acc[:k], weight_shape, p, j, cf, geo)
    return (gw, acc[k].reshape(p, o).sum(axis=0)) if bias_grad else gw


def _compiled_weight_grad(g2, xt, geo, p: int, j: int, ones: bool, per_sample: int, part) -> np.ndarray:
    """``parallel_sum`` of the row-block weight gradient with each thread's share in one
    compiled call (``_jit_block_conv.weight_grad``); a thread where MKL cannot be called
    from compiled code (``_jit_blas.available`` is asked where the call runs) adds the
    Python path's chunks (``part``) instead."""
    n = xt.shape[0]
    ho, wo = geo["out_hw"]
    kc = geo["kernel"][0] * j * xt.shape[3] + ones
    chunk = max(1, COMPILED_CHUNK_BYTES // per_sample)

    def run(start, stop):
        if not _jit_block_conv.usable(xt, geo["pads"], False):
            return sum_chunks(start, stop, part, per_sample, CHUNK_BYTES)
        cols = workspace.get("conv_cols", (min(chunk, stop - start) * ho * (wo // p), kc), xt.dtype)
        product = workspace.get("wgrad_product", (kc, g2.shape[1]), xt.dtype)
        return _jit_block_conv.weight_grad(xt, g2, cols, geo, p, j, ones, start, stop, chunk, product)

    parts = parallel_for(n, run, n * per_sample)
    total = parts[0]
    for q in parts[1:]:
        total += q
    return total


# ------------------------------------------------------------------ channels-first columns
def _cf_columns(x: np.ndarray, kernel, geo: dict, ones: bool) -> np.ndarray:
    """Channels-first columns (K (+1), M) of an NCHW batch chunk (a workspace array); with
    ``ones`` a last row of ones, which carries the bias through the GEMM (forward: bias as
    the weight's last row; weight gradient: the bias gradient as the result's last row)."""
    n, c = x.shape[:2]
    (kh, kw), (ho, wo) = kernel, geo["out_hw"]
    k = c * kh * kw
    cols = workspace.get("conv_cols", (k + ones, n * ho * wo), x.dtype)
    im2col_channels_first(x, (kh, kw), geo["stride"], geo["dilation"], geo["pads"], (ho, wo),
                          cols[:k].reshape(c, kh, kw, n, ho, wo))
    if ones:
        cols[k] = 1
    return cols


def _cf_kernel(weight, geo, bias=None, relu: bool = False):
    """Forward with channels-first columns (K, M): few input channels (first layers); the
    (K (+1), O) weight operand prepared once (see ``small_c_kernel``)."""
    o, c, kh, kw = weight.shape
    ho, wo = geo["out_hw"]
    k = c * kh * kw
    ones = bias is not None
    # The bias rides in the GEMM as one more row of ones in the columns: with K this small
    # a separate pass over the output costs as much as the GEMM itself (measured on
    # seed-000's 1 -> 20 3x3 layer: GEMM 0.36 + bias 0.27 ms -> 0.40 ms).
    wmat = weight.reshape(o, k).T                                         # (K, O) view
    if ones:
        wmat = np.concatenate([wmat, bias.reshape(1, o)])                  # (K + 1, O)

    def conv(xt):
        n = xt.shape[0]
        x = nchw(xt)
        out = _recycle.empty((n, ho, wo, o), dtype=xt.dtype)
        per_sample = ho * wo * (k + ones) * xt.itemsize

        def run(start, stop):
            for n0, n1 in batch_chunks(start, stop, per_sample, CHUNK_BYTES):
                cols = _cf_columns(x[n0:n1], (kh, kw), geo, ones)
                dst = out[n0:n1].reshape(cols.shape[1], o)
                _gemm.matmul(cols.T, wmat, out=dst)
                finish_output(dst, None, relu)

        parallel_for(n, run, n * per_sample)
        return out

    return conv


def _cf_weight_grad(g, xt, weight_shape, geo, ones: bool = False) -> np.ndarray:
    """(K, O) weight gradient with channels-first columns; (K + 1, O) with ``ones``, the
    last row then being the bias gradient."""
    n = xt.shape[0]
    o, c, kh, kw = weight_shape
    ho, wo = geo["out_hw"]
    k = c * kh * kw
    x = nchw(xt)
    per_sample = ho * wo * k * xt.itemsize

    def part(n0, n1):
        cols = _cf_columns(x[n0:n1], (kh, kw), geo, ones)
        return _gemm.matmul(cols, g[n0:n1].reshape(cols.shape[1], o))        # (K (+1), O)

    return parallel_sum(n, part, per_sample, CHUNK_BYTES)
