"""Convolutions of inputs with very few channels (a network's first layer: 1 or 3).

Why a path of its own: with channels last and C = 1, every run that im2col copies is a
single value. Channels-first columns (K, M) copy whole image rows instead, and the GEMM
reads them transposed. Used by ``_conv_kernels`` when C <= ``SMALL_C`` and groups == 1.
"""

from __future__ import annotations

import numpy as np

from ._buffers import batch_chunks, workspace
from ._im2col import im2col_channels_first, nchw
from ._parallel import parallel_for


#: Target size of one chunk's column matrix.
CHUNK_BYTES = 8 << 20


def small_c_conv(xt, weight, geo, bias=None) -> np.ndarray:
    """Forward with channels-first columns (K, M): few input channels (first layers)."""
    n = xt.shape[0]
    o, c, kh, kw = weight.shape
    ho, wo = geo["out_hw"]
    k = c * kh * kw
    wmat = weight.reshape(o, k).T                                         # (K, O) view
    x = nchw(xt)
    out = np.empty((n, ho, wo, o), dtype=xt.dtype)
    per_sample = ho * wo * k * xt.itemsize

    def run(start, stop):
        for n0, n1 in batch_chunks(start, stop, per_sample, CHUNK_BYTES):
            m = (n1 - n0) * ho * wo
            cols = workspace.get("conv_cols", (c, kh, kw, n1 - n0, ho, wo), xt.dtype)
            im2col_channels_first(x[n0:n1], (kh, kw), geo["stride"], geo["dilation"], geo["pads"], (ho, wo), cols)
            dst = out[n0:n1].reshape(m, o)
            np.matmul(cols.reshape(k, m).T, wmat, out=dst)
            if bias is not None:
                dst += bias

    parallel_for(n, run, n * per_sample)
    return out


def small_c_weight_grad(g, xt, weight_shape, geo) -> np.ndarray:
    n = xt.shape[0]
    o, c, kh, kw = weight_shape
    ho, wo = geo["out_hw"]
    k = c * kh * kw
    x = nchw(xt)
    per_sample = ho * wo * k * xt.itemsize

    def run(start, stop):
        acc = None
        for n0, n1 in batch_chunks(start, stop, per_sample, CHUNK_BYTES):
            m = (n1 - n0) * ho * wo
            cols = workspace.get("conv_cols", (c, kh, kw, n1 - n0, ho, wo), xt.dtype)
            im2col_channels_first(x[n0:n1], (kh, kw), geo["stride"], geo["dilation"], geo["pads"], (ho, wo), cols)
            part = cols.reshape(k, m) @ g[n0:n1].reshape(m, o)          # (K, O)
            if acc is None:
                acc = part
            else:
                acc += part
        return acc

    parts = parallel_for(n, run, n * per_sample)
    acc = parts[0]
    for p in parts[1:]:
        acc += p
    return np.ascontiguousarray(acc.T).reshape(o, c, kh, kw)
