"""Pure array kernels (no state): convolution, padding, pooling, softmax.

Layout. Arguments and results are NCHW arrays, as in PyTorch. Inside, the kernels work
on the NHWC *view* ``x.transpose(0, 2, 3, 1)`` and allocate their results in NHWC memory,
returning the NCHW view of it. Why: with channels last, the im2col matrix of a
convolution is a plain row-major (N*Ho*Wo, kh*kw*C) matrix, its GEMM output is already
the next layer's NHWC input, and every strided copy below moves runs of C contiguous
values. The NCHW view costs nothing and behaves like any array (``reshape`` copies it
into NCHW order when a Flatten needs that).

Every kernel loops over the kernel's taps (kh*kw offsets), each step one strided slice
of the whole batch; never over pixels and never ``np.add.at``. Padding is never
materialised: for each tap only the outputs whose input pixel lies inside the image are
touched (``_tap_windows``), the rest are zero (convolution, average pooling) or skipped
(max pooling).

The ``*_forward`` functions return ``(out, cache)``; the matching ``*_backward``
functions take the upstream gradient and that cache.
"""

from __future__ import annotations


import numpy as np


__all__ = [
    "pair", "conv_output_size", "same_padding", "resolve_conv_padding", "pool_output_size",
    "im2col", "col2im",
    "conv2d", "conv2d_forward", "conv2d_backward",
    "pad2d", "pad2d_backward",
    "max_pool2d", "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_forward", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_windows",
    "logsumexp", "softmax", "log_softmax",
]


from ._conv_kernels import (depthwise_backward, depthwise_forward, gemm_conv_forward,
                            gemm_conv_input_grad, gemm_conv_weight_grad)
from ._im2col import (col2im, conv_output_size, im2col, nchw as _nchw, nhwc as _nhwc, pair,
                      pool_output_size, resolve_conv_padding, same_padding, tap_windows as _tap_windows)


# ---------------------------------------------------------------------------------- conv
def _check_conv_args(x: np.ndarray, weight: np.ndarray, groups: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D weight (O, C/groups, kh, kw), got shape {weight.shape}")
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"conv2d: expected input of shape (N, {weight.shape[1] * groups}, H, W), got {x.shape}"
        )
    if weight.shape[0] % groups:
        raise ValueError(f"conv2d: out channels {weight.shape[0]} not divisible by groups={groups}")


def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                   stride=1, padding=0, dilation=1, groups: int = 1,
                   keep_cache: bool = True):
    """2-D convolution (cross-correlation, as PyTorch): im2col + one (batched) GEMM.

    Args:
        x: (N, C, H, W). weight: (O, C // groups, kh, kw). bias: (O,) or None.
        stride, dilation: int or pair. padding: int, pair, 'valid', 'same' (TensorFlow
            semantics for any stride) or an explicit (top, bottom, left, right) 4-tuple.
        groups: channel groups (groups == C is depthwise).
        keep_cache: when False nothing is kept for backward (inference).

    Returns:
        ``(out, cache)``: out (N, O, Ho, Wo) in NHWC memory; cache for ``conv2d_backward``
        (None when ``keep_cache`` is False).
    """
    _check_conv_args(x, weight, groups)
    if x.dtype != weight.dtype:
        x = x.astype(weight.dtype)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if isinstance(padding, tuple) and len(padding) == 4:
        pads = tuple(int(p) for p in padding)
    else:
        pads = resolve_conv_padding(padding, (h, w), (kh, kw), stride, dilation)
    ho = conv_output_size(h, kh, stride[0], pads[0] + pads[1], dilation[0])
    wo = conv_output_size(w, kw, stride[1], pads[2] + pads[3], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"conv2d: input of spatial size ({h}, {w}) with padding {pads} is too small for "
            f"kernel_size ({kh}, {kw}) with dilation {dilation}"
        )
    xt = _nhwc(x)
    geometry = dict(kernel=(kh, kw), stride=stride, dilation=dilation, pads=pads, out_hw=(ho, wo))
    if groups > 1 and cg == 1:
        out = depthwise_forward(xt, weight, geometry)
    else:
        out = gemm_conv_forward(xt, weight, groups, geometry)
    if bias is not None:
        out += bias.astype(out.dtype, copy=False)
    cache = (xt, groups, geometry) if keep_cache else None
    return _nchw(out), cache


def conv2d_backward(grad_out: np.ndarray, cache, weight: np.ndarray, need_input_grad: bool = True,
                    need_weight_grad: bool = True, need_bias_grad: bool = True):
    """Gradients of ``conv2d_forward``.

    Args:
        grad_out: (N, O, Ho, Wo), any layout; never written to.
        cache: from ``conv2d_forward``.
        weight: the weight used in the forward pass.
        need_*: skip the work of gradients nobody needs (first layer, frozen parameters).

    Returns:
        ``(grad_x, grad_weight, grad_bias)``; each None when not needed. grad_x is
        (N, C, H, W) in NHWC memory.
    """
    xt, groups, geo = cache
    n, h, w, c = xt.shape
    o, cg, kh, kw = weight.shape
    ho, wo = geo["out_hw"]
    if grad_out.shape != (n, o, ho, wo):
        raise ValueError(f"conv2d backward: expected grad_out of shape {(n, o, ho, wo)}, got {grad_out.shape}")
    if grad_out.dtype != xt.dtype:
        grad_out = grad_out.astype(xt.dtype)
    g = np.ascontiguousarray(_nhwc(grad_out))  # (N, Ho, Wo, O)
    gb = g.reshape(-1, o).sum(axis=0) if need_bias_grad else None
    if groups > 1 and cg == 1:
        gx, gw = depthwise_backward(g, xt, weight, geo, need_input_grad, need_weight_grad)
    else:
        gw = gemm_conv_weight_grad(g, xt, weight.shape, groups, geo) if need_weight_grad else None
        gx = gemm_conv_input_grad(g, weight, groups, geo, xt.shape) if need_input_grad else None
    return (None if gx is None else _nchw(gx)), gw, gb


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> np.ndarray:
    """Convolution forward only (like ``torch.nn.functional.conv2d``)."""
    return conv2d_forward(x, weight, bias, stride, padding, dilation, groups, keep_cache=False)[0]


# ---------------------------------------------------------------------------------- padding
def pad2d(x: np.ndarray, padding: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    """Constant padding of the last two axes; ``padding`` is (left, right, top, bottom) as
    in PyTorch. Negative amounts crop. Returns (N, C, H', W') in NHWC memory."""
    left, right, top, bottom = (int(p) for p in padding)
    n, c, h, w = x.shape
    ho, wo = h + top + bottom, w + left + right
    if ho < 1 or wo < 1:
        raise ValueError(f"pad2d: padding {padding} leaves an empty output for input {x.shape}")
    out = np.full((n, ho, wo, c), value, dtype=x.dtype) if value else np.zeros((n, ho, wo, c), x.dtype)
    src, dst = _pad_slices(h, w, left, right, top, bottom)
    out[:, dst[0], dst[1]] = _nhwc(x)[:, src[0], src[1]]
    return _nchw(out)


def _pad_slices(h, w, left, right, top, bottom):
    src = (slice(max(-top, 0), h - max(-bottom, 0)), slice(max(-left, 0), w - max(-right, 0)))
    dst = (slice(max(top, 0), max(top, 0) + src[0].stop - src[0].start),
           slice(max(left, 0), max(left, 0) + src[1].stop - src[1].start))
    return src, dst


def pad2d_backward(grad_out: np.ndarray, in_shape: tuple[int, ...],
                   padding: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of ``pad2d`` with respect to its input (N, C, H, W)."""
    left, right, top, bottom = (int(p) for p in padding)
    n, c, h, w = in_shape
    src, dst = _pad_slices(h, w, left, right, top, bottom)
    gx = np.zeros((n, h, w, c), dtype=grad_out.dtype)
    gx[:, src[0], src[1]] = _nhwc(grad_out)[:, dst[0], dst[1]]
    return _nchw(gx)


# ---------------------------------------------------------------------------------- pooling
def _pool_geometry(x, kernel, stride, padding, ceil_mode, name):
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    kernel = pair(kernel, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding", minimum=0)
    for p, k in zip(padding, kernel):
        if p > k // 2:
            raise ValueError(f"{name}: padding should be at most half of kernel_size, got padding="
                             f"{padding} for kernel_size={kernel}")
    n, c, h, w = x.shape
    ho = pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{name}: input of spatial size ({h}, {w}) with padding {padding} is too small for "
            f"kernel_size {kernel}"
        )
    hwin = _tap_windows(h, ho, kernel[0], stride[0], 1, padding[0])
    wwin = _tap_windows(w, wo, kernel[1], stride[1], 1, padding[1])
    return dict(kernel=kernel, stride=stride, padding=padding, in_hw=(h, w), out_hw=(ho, wo),
                hwin=hwin, wwin=wwin, ceil_mode=ceil_mode)


def _taps(geo):
    """(tap index, out slices, in slices) for every tap that reads inside the input."""
    kw = geo["kernel"][1]
    for i, hw in enumerate(geo["hwin"]):
        if hw is None:
            continue
        for j, ww in enumerate(geo["wwin"]):
            if ww is None:
                continue
            yield i * kw + j, (hw[0], ww[0]), (hw[1], ww[1])


def _covers(geo, out_sl) -> bool:
    ho, wo = geo["out_hw"]
    return out_sl[0] == slice(0, ho) and out_sl[1] == slice(0, wo)


def max_pool2d_forward(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                       keep_cache: bool = True):
    """Max pooling. Returns ``(out, cache)``; the cache keeps the index of the winning tap
    of each output (uint8 when it fits: a quarter of the output's float32 bytes). Ties
    go to the first tap in row-major order, as in PyTorch."""
    geo = _pool_geometry(x, kernel_size, stride, padding, ceil_mode, "max_pool2d")
    n, c, h, w = x.shape
    ho, wo = geo["out_hw"]
    xt = _nhwc(x)
    ntaps = geo["kernel"][0] * geo["kernel"][1]
    idx_dtype = np.uint8 if ntaps <= 256 else np.int32
    out = np.empty((n, ho, wo, c), dtype=x.dtype)
    idx = np.zeros((n, ho, wo, c), dtype=idx_dtype) if keep_cache else None
    filled = False
    for t, out_sl, in_sl in _taps(geo):
        src = xt[:, in_sl[0], in_sl[1]]
        if not filled:
            if not _covers(geo, out_sl):
                out.fill(-np.inf)
            else:
                out[...] = src
                if idx is not None:
                    idx.fill(t)
                filled = True
                continue
            filled = True
        dst = out[:, out_sl[0], out_sl[1]]
        better = src > dst
        np.copyto(dst, src, where=better)
        if idx is not None:
            np.copyto(idx[:, out_sl[0], out_sl[1]], idx_dtype(t), where=better)
    cache = (idx, geo, x.shape) if keep_cache else None
    return _nchw(out), cache


def max_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``max_pool2d_forward`` (the gradient goes to the winning tap)."""
    idx, geo, in_shape = cache
    n, c, h, w = in_shape
    g = _nhwc(grad_out)
    gx = np.zeros((n, h, w, c), dtype=grad_out.dtype)
    for t, out_sl, in_sl in _taps(geo):
        sel = idx[:, out_sl[0], out_sl[1]] == t
        gx[:, in_sl[0], in_sl[1]] += g[:, out_sl[0], out_sl[1]] * sel
    return _nchw(gx)


def _avg_divisor(geo, count_include_pad: bool, divisor_override=None) -> np.ndarray:
    """(Ho, Wo, 1) reciprocal window sizes, PyTorch's rule: windows are clipped to the
    padded input; without count_include_pad only pixels inside the input count."""
    if divisor_override:
        return np.full((1, 1, 1), 1.0 / divisor_override)
    counts = []
    for axis in (0, 1):
        size, k, s, p = geo["in_hw"][axis], geo["kernel"][axis], geo["stride"][axis], geo["padding"][axis]
        start = np.arange(geo["out_hw"][axis]) * s - p
        end = np.minimum(start + k, size + p)
        if count_include_pad:
            counts.append(end - start)
        else:
            counts.append(np.minimum(end, size) - np.maximum(start, 0))
    return (1.0 / np.outer(counts[0], counts[1]))[:, :, None]


def avg_pool2d_forward(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                       count_include_pad: bool = True, keep_cache: bool = True):
    """Average pooling with PyTorch's divisor rules. Returns ``(out, cache)``."""
    geo = _pool_geometry(x, kernel_size, stride, padding, ceil_mode, "avg_pool2d")
    n, c, h, w = x.shape
    ho, wo = geo["out_hw"]
    xt = _nhwc(x)
    inv = _avg_divisor(geo, count_include_pad).astype(x.dtype)
    out = np.empty((n, ho, wo, c), dtype=x.dtype)
    filled = False
    for t, out_sl, in_sl in _taps(geo):
        src = xt[:, in_sl[0], in_sl[1]]
        if not filled:
            filled = True
            if _covers(geo, out_sl):
                out[...] = src
                continue
            out.fill(0)
        out[:, out_sl[0], out_sl[1]] += src
    out *= inv
    cache = (inv, geo, x.shape) if keep_cache else None
    return _nchw(out), cache


def avg_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``avg_pool2d_forward``."""
    inv, geo, in_shape = cache
    n, c, h, w = in_shape
    g = _nhwc(grad_out) * inv
    gx = np.zeros((n, h, w, c), dtype=grad_out.dtype)
    for t, out_sl, in_sl in _taps(geo):
        gx[:, in_sl[0], in_sl[1]] += g[:, out_sl[0], out_sl[1]]
    return _nchw(gx)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False) -> np.ndarray:
    """Max pooling forward only."""
    return max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, keep_cache=False)[0]


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> np.ndarray:
    """Average pooling forward only."""
    return avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, keep_cache=False)[0]


def adaptive_windows(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) averaging matrix of PyTorch's adaptive pooling: output i averages
    inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1."""
    i = np.arange(out_size)
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    j = np.arange(in_size)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside / (end - start)[:, None]


def _adaptive_size(output_size, h, w) -> tuple[int, int]:
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    oh, ow = output_size
    return (h if oh is None else int(oh)), (w if ow is None else int(ow))


def adaptive_avg_pool2d_forward(x: np.ndarray, output_size, keep_cache: bool = True):
    """Adaptive average pooling to ``output_size`` (int, pair, None entries keep the size)."""
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    oh, ow = _adaptive_size(output_size, h, w)
    if oh < 1 or ow < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got {output_size!r}")
    xt = _nhwc(x)
    if oh == 1 and ow == 1:
        out = xt.sum(axis=(1, 2), keepdims=True) * x.dtype.type(1.0 / (h * w))
        return _nchw(out), ((n, c, h, w), None, None)
    ph = adaptive_windows(h, oh).astype(x.dtype)
    pw = adaptive_windows(w, ow).astype(x.dtype)
    # out[n,i,j,c] = sum_h sum_w ph[i,h] pw[j,w] x[n,h,w,c], as two matmuls.
    tmp = np.matmul(ph, np.ascontiguousarray(xt).reshape(n, h, w * c))        # (N, oh, W*C)
    out = np.matmul(pw, tmp.reshape(n * oh, w, c)).reshape(n, oh, ow, c)      # (N, oh, ow, C)
    return _nchw(out), ((n, c, h, w), ph, pw)


def adaptive_avg_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``adaptive_avg_pool2d_forward``."""
    (n, c, h, w), ph, pw = cache
    g = _nhwc(grad_out)
    if ph is None:
        gx = np.empty((n, h, w, c), dtype=grad_out.dtype)
        gx[...] = g * grad_out.dtype.type(1.0 / (h * w))
        return _nchw(gx)
    oh, ow = ph.shape[0], pw.shape[0]
    tmp = np.matmul(pw.T, np.ascontiguousarray(g).reshape(n * oh, ow, c))     # (N*oh, W, C)
    gx = np.matmul(ph.T, tmp.reshape(n, oh, w * c)).reshape(n, h, w, c)
    return _nchw(gx)


def adaptive_avg_pool2d(x: np.ndarray, output_size) -> np.ndarray:
    """Adaptive average pooling forward only."""
    return adaptive_avg_pool2d_forward(x, output_size, keep_cache=False)[0]


# ---------------------------------------------------------------------------------- softmax
def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, stable for large values; keeps x's dtype."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x - logsumexp(x) along ``axis``."""
    return x - logsumexp(x, axis=axis, keepdims=True)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    e /= np.sum(e, axis=axis, keepdims=True)
    return e
