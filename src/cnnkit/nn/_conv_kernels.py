"""Convolution forward / backward kernels (NHWC inside, see ``nn.functional``).

- forward: im2col + one GEMM (a batched GEMM over groups), done in batch chunks so that
  the column matrix stays small (bounded scratch memory, and the GEMM reads columns that
  were just written, still in cache).
- weight gradient: the columns are rebuilt from the input kept by forward (keeping them
  for every layer until backward would multiply the training memory) and multiplied by
  the upstream gradient, chunk by chunk.
- input gradient, stride 1: a convolution of the padded upstream gradient with the
  flipped, transposed kernel (im2col + GEMM again): much faster than col2im's kh*kw
  strided scatter-adds. Stride > 1: GEMM to columns + col2im.
- depthwise (one input channel per group): a tap loop of broadcast multiply-adds; G tiny
  GEMMs would be dominated by call overhead.
"""

from __future__ import annotations

import numpy as np

from ._buffers import workspace
from ._im2col import col2im, im2col, tap_windows

#: Target size of one chunk's column matrix; at least one sample per chunk.
CHUNK_BYTES = 8 << 20


def _chunks(n: int, bytes_per_sample: int):
    step = max(1, min(n, CHUNK_BYTES // max(bytes_per_sample, 1)))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def weight_matrix(weight: np.ndarray, groups: int) -> np.ndarray:
    """(O, Cg, kh, kw) -> (G, kh*kw*Cg, Og), rows ordered like the im2col columns."""
    o, cg, kh, kw = weight.shape
    return weight.reshape(groups, o // groups, cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(
        groups, kh * kw * cg, o // groups)


def gemm_conv_forward(xt: np.ndarray, weight: np.ndarray, groups: int, geo: dict) -> np.ndarray:
    """NHWC input (N, H, W, C) -> NHWC output (N, Ho, Wo, O), a fresh array."""
    n = xt.shape[0]
    o, cg, kh, kw = weight.shape
    ho, wo = geo["out_hw"]
    og, k = o // groups, kh * kw * cg
    wk = weight_matrix(weight, groups)
    out = np.empty((n, ho, wo, o), dtype=xt.dtype)
    for n0, n1 in _chunks(n, groups * ho * wo * k * xt.itemsize):
        m = (n1 - n0) * ho * wo
        cols = workspace.get("conv_cols", (groups, n1 - n0, ho, wo, kh, kw, cg), xt.dtype)
        im2col(xt[n0:n1], (kh, kw), geo["stride"], geo["dilation"], geo["pads"], (ho, wo), groups, out=cols)
        dst = out[n0:n1].reshape(m, o)
        if groups == 1:
            np.matmul(cols.reshape(m, k), wk[0], out=dst)
        else:
            np.matmul(cols.reshape(groups, m, k), wk, out=dst.reshape(m, groups, og).transpose(1, 0, 2))
    return out


def gemm_conv_weight_grad(g: np.ndarray, xt: np.ndarray, weight_shape, groups: int, geo: dict) -> np.ndarray:
    """d loss / d weight (O, Cg, kh, kw) from the NHWC upstream gradient g (N, Ho, Wo, O)."""
    n = xt.shape[0]
    o, cg, kh, kw = weight_shape
    ho, wo = geo["out_hw"]
    og, k = o // groups, kh * kw * cg
    gwk = None
    for n0, n1 in _chunks(n, groups * ho * wo * k * xt.itemsize):
        m = (n1 - n0) * ho * wo
        cols = workspace.get("conv_cols", (groups, n1 - n0, ho, wo, kh, kw, cg), xt.dtype)
        im2col(xt[n0:n1], (kh, kw), geo["stride"], geo["dilation"], geo["pads"], (ho, wo), groups, out=cols)
        g3 = g[n0:n1].reshape(m, groups, og).transpose(1, 2, 0)          # (G, Og, M) view
        part = np.matmul(g3, cols.reshape(groups, m, k))                  # (G, Og, K)
        if gwk is None:
            gwk = part
        else:
            gwk += part
    return np.ascontiguousarray(
        gwk.reshape(groups, og, kh, kw, cg).transpose(0, 1, 4, 2, 3).reshape(o, cg, kh, kw))


def gemm_conv_input_grad(g: np.ndarray, weight: np.ndarray, groups: int, geo: dict, in_shape) -> np.ndarray:
    """d loss / d input, NHWC (N, H, W, C), from the NHWC upstream gradient (N, Ho, Wo, O)."""
    n, h, w, c = in_shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    (sh, sw), (dh, dw) = geo["stride"], geo["dilation"]
    t, b, l, r = geo["pads"]
    if sh == 1 and sw == 1:
        # Transposed convolution as a plain one: pad g by the kernel's reach minus the
        # forward padding (negative = crop) and correlate with the flipped kernel, whose
        # in / out channels are swapped within each group.
        wt = weight.reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
        wt = wt.reshape(c, og, kh, kw)
        pads = ((kh - 1) * dh - t, (kh - 1) * dh - b, (kw - 1) * dw - l, (kw - 1) * dw - r)
        tgeo = dict(kernel=(kh, kw), stride=(1, 1), dilation=(dh, dw), pads=pads, out_hw=(h, w))
        return gemm_conv_forward(g, wt, groups, tgeo)
    ho, wo = geo["out_hw"]
    k = kh * kw * cg
    wk = weight_matrix(weight, groups).transpose(0, 2, 1)                # (G, Og, K)
    gx = np.empty((n, h, w, c), dtype=g.dtype)
    for n0, n1 in _chunks(n, groups * ho * wo * k * g.itemsize):
        m = (n1 - n0) * ho * wo
        gcols = workspace.get("conv_cols", (groups, n1 - n0, ho, wo, kh, kw, cg), g.dtype)
        g3 = g[n0:n1].reshape(m, groups, og).transpose(1, 0, 2)           # (G, M, Og) view
        np.matmul(g3, wk, out=gcols.reshape(groups, m, k))
        col2im(gcols, (h, w), geo["stride"], geo["dilation"], geo["pads"], out=gx[n0:n1])
    return gx


# ---------------------------------------------------------------------------------- depthwise
def _depthwise_taps(geo, h, w):
    kh, kw = geo["kernel"]
    hwin = tap_windows(h, geo["out_hw"][0], kh, geo["stride"][0], geo["dilation"][0], geo["pads"][0])
    wwin = tap_windows(w, geo["out_hw"][1], kw, geo["stride"][1], geo["dilation"][1], geo["pads"][2])
    for i, hw in enumerate(hwin):
        if hw is None:
            continue
        for j, ww in enumerate(wwin):
            if ww is not None:
                yield i, j, (hw[0], ww[0]), (hw[1], ww[1])


def depthwise_forward(xt: np.ndarray, weight: np.ndarray, geo: dict) -> np.ndarray:
    n, h, w, c = xt.shape
    o, _, kh, kw = weight.shape
    mult = o // c
    ho, wo = geo["out_hw"]
    out = np.zeros((n, ho, wo, c, mult), dtype=xt.dtype)
    wv = weight.reshape(c, mult, kh, kw)
    for i, j, (oh, ow), (ih, iw) in _depthwise_taps(geo, h, w):
        out[:, oh, ow] += xt[:, ih, iw, :, None] * wv[:, :, i, j]
    return out.reshape(n, ho, wo, o)


def depthwise_backward(g, xt, weight, geo, need_input_grad, need_weight_grad):
    n, h, w, c = xt.shape
    o, _, kh, kw = weight.shape
    mult = o // c
    ho, wo = geo["out_hw"]
    g5 = g.reshape(n, ho, wo, c, mult)
    wv = weight.reshape(c, mult, kh, kw)
    gw = np.zeros((c, mult, kh, kw), dtype=xt.dtype) if need_weight_grad else None
    gx = np.zeros((n, h, w, c), dtype=xt.dtype) if need_input_grad else None
    for i, j, (oh, ow), (ih, iw) in _depthwise_taps(geo, h, w):
        gsub = g5[:, oh, ow]
        if need_weight_grad:
            gw[:, :, i, j] = np.einsum("nhwc,nhwcm->cm", xt[:, ih, iw], gsub)
        if need_input_grad:
            if mult == 1:
                gx[:, ih, iw] += gsub[..., 0] * wv[:, 0, i, j]
            else:
                gx[:, ih, iw] += np.einsum("nhwcm,cm->nhwc", gsub, wv[:, :, i, j])
    return gx, (None if gw is None else gw.reshape(o, 1, kh, kw))
