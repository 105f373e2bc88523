"""Pure array kernels (no state): convolution, padding, pooling, softmax.

Layout. Arguments and results are NCHW arrays, as in PyTorch. Inside, the kernels work
on the NHWC *view* ``x.transpose(0, 2, 3, 1)`` and allocate their results in NHWC memory,
returning the NCHW view of it. Why: with channels last, the im2col matrix of a
convolution is a plain row-major (N*Ho*Wo, kh*kw*C) matrix, its GEMM output is already
the next layer's NHWC input, and every strided copy moves runs of C contiguous values.
The NCHW view costs nothing and behaves like any array (``reshape`` copies it into NCHW
order when a Flatten needs that).

Where the work is done (each file says why it is done that way):

- ``_im2col.py``: sizes, padding, im2col (one ``as_strided`` copy) and col2im (one
  strided add per kernel tap, never per pixel, never ``np.add.at``);
- ``_conv_kernels.py``: convolution as im2col + GEMM in batch chunks, the input gradient
  as a transposed convolution, depthwise convolution as a tap loop;
- ``_winograd.py``: Winograd F(2x2, 3x3) for 3x3 stride-1 layers with many channels;
- ``_pool_kernels.py``: max / average / adaptive pooling as tap loops over strided views;
- ``_parallel.py``: the batch split over threads (``set_num_threads``);
- ``_buffers.py``: scratch memory reused across calls.

The ``*_forward`` functions return ``(out, cache)``; the matching ``*_backward``
functions take the upstream gradient and that cache.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "pair", "conv_output_size", "same_padding", "resolve_conv_padding", "pool_output_size",
    "im2col", "col2im",
    "conv2d", "conv2d_forward", "conv2d_backward", "conv2d_relu_avg_pool2d",
    "pad2d", "pad2d_backward",
    "max_pool2d", "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_forward", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_windows",
    "logsumexp", "softmax", "log_softmax",
    "get_num_threads", "set_num_threads", "parallel_matmul",
]

from . import _recycle
from ._conv_kernels import (column_sums, conv_forward_kernel, depthwise_backward, gemm_conv_input_grad,
                            gemm_conv_param_grads)
from ._conv_pool import conv_relu_avg_pool, conv_relu_max_pool
from ._epilogue import mask_by_positive
from ._parallel import get_num_threads, parallel_for, parallel_matmul, set_num_threads
from ._im2col import (col2im, conv_output_size, im2col, nchw as _nchw, nhwc as _nhwc, pair,
                      pool_output_size, resolve_conv_padding, same_padding)
from ._pool_kernels import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward,
                            adaptive_windows, avg_pool2d, avg_pool2d_backward, avg_pool2d_forward, avg_pool_divisor,
                            max_pool2d, max_pool2d_backward, max_pool2d_forward, pool_geometry)


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
                   keep_cache: bool = True, relu: bool | float = False, relu_input: bool = False):
    """2-D convolution (cross-correlation, as PyTorch): im2col + one (batched) GEMM.

    Args:
        x: (N, C, H, W). weight: (O, C // groups, kh, kw). bias: (O,) or None.
        stride, dilation: int or pair. padding: int, pair, 'valid', 'same' (TensorFlow
            semantics for any stride) or an explicit (top, bottom, left, right) 4-tuple.
        groups: channel groups (groups == C is depthwise).
        keep_cache: when False nothing is kept for backward (inference).
        relu: return ``max(conv, 0)``, the ReLU fused into the kernels' output pass (the
            backward is still the convolution's alone: the ReLU's gradient is its own); a
            number caps the output too: 6.0 gives ``min(max(conv, 0), 6)``, a ReLU6.
        relu_input: x is the output of a ReLU whose backward is folded into this layer's:
            ``conv2d_backward``'s input gradient is then multiplied by ``x > 0``, i.e. it is
            the gradient with respect to that ReLU's input (see ``Sequential``).

    Returns:
        ``(out, cache)``: out (N, O, Ho, Wo) in NHWC memory; cache for ``conv2d_backward``
        (None when ``keep_cache`` is False).
    """
    x, xt, geometry, bias = _conv_setup(x, weight, bias, stride, padding, dilation, groups, relu_input)
    out = conv_forward_kernel(xt.shape[3], weight, groups, geometry, bias, relu)(xt)
    cache = (xt, groups, geometry) if keep_cache else None
    return _nchw(out), cache


def conv2d_relu_max_pool2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride, padding,
                           dilation, groups: int, pool_kernel, pool_stride=None, pool_padding=0,
                           ceil_mode: bool = False, keep_cache: bool = True, relu_input: bool = False):
    """``max_pool2d(relu(conv2d(x)))`` in one pass over the batch (``_conv_pool``): the
    full-size convolution output is never kept.

    Args:
        x, weight, bias, stride, padding, dilation, groups, relu_input: as ``conv2d_forward``.
        pool_kernel, pool_stride, pool_padding, ceil_mode: as ``max_pool2d_forward``.
        keep_cache: keep what backward needs (the convolution's cache and the pool's
            winning taps); the pool's index marks windows without a positive maximum as
            dead, so ``max_pool2d_backward`` returns the gradient with respect to the ReLU's
            input: the ReLU's backward is folded into the pool's.

    Returns:
        ``(out, conv_cache, pool_cache)``: out (N, O, Hp, Wp) in NHWC memory; the caches for
        ``conv2d_backward`` and ``max_pool2d_backward`` (None when ``keep_cache`` is False).
    """
    x, xt, geometry, bias = _conv_setup(x, weight, bias, stride, padding, dilation, groups, relu_input)
    n, o = x.shape[0], weight.shape[0]
    conv_shape = (n, o) + geometry["out_hw"]
    pool_geo = pool_geometry(conv_shape, pool_kernel, pool_stride, pool_padding, ceil_mode, "max_pool2d")
    if not keep_cache:
        x, xt, geometry, conv_shape, pool_geo = _crop_to_pool(x, xt, geometry, conv_shape, pool_geo, "max_pool2d")
    # The ReLU, and without an index the bias too, go after the pool (a quarter of the
    # values for 2x2): max and ReLU commute, and so do max and adding a per-channel constant
    # (rounded addition is monotonic). With an index the bias stays before the max, so that
    # ties made by rounding pick the same winning tap as the layers run one by one.
    kernel = conv_forward_kernel(xt.shape[3], weight, groups, geometry, bias if keep_cache else None, xt=xt)
    out, idx = conv_relu_max_pool(xt, kernel, conv_shape, pool_geo, keep_cache, weight.dtype,
                                  None if keep_cache else bias)
    if not keep_cache:
        return _nchw(out), None, None
    return _nchw(out), (xt, groups, geometry), (idx, pool_geo, conv_shape)


def conv2d_relu_avg_pool2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride, padding,
                           dilation, groups: int, pool_kernel, pool_stride=None, pool_padding=0,
                           ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """``avg_pool2d(relu(conv2d(x)))`` in one pass over the batch (``_conv_pool``), for
    inference: nothing is kept for a backward.

    Args:
        x, weight, bias, stride, padding, dilation, groups: as ``conv2d_forward``.
        pool_kernel, pool_stride, pool_padding, ceil_mode, count_include_pad: as
            ``avg_pool2d_forward``.

    Returns:
        out (N, O, Hp, Wp) in NHWC memory, the values of the three layers run one by one.
    """
    x, xt, geometry, bias = _conv_setup(x, weight, bias, stride, padding, dilation, groups, False)
    conv_shape = (x.shape[0], weight.shape[0]) + geometry["out_hw"]
    pool_geo = pool_geometry(conv_shape, pool_kernel, pool_stride, pool_padding, ceil_mode, "avg_pool2d")
    x, xt, geometry, conv_shape, pool_geo = _crop_to_pool(x, xt, geometry, conv_shape, pool_geo, "avg_pool2d")
    kernel = conv_forward_kernel(xt.shape[3], weight, groups, geometry, bias, relu=True, xt=xt)
    inv = avg_pool_divisor(pool_geo, count_include_pad, weight.dtype)
    return _nchw(conv_relu_avg_pool(xt, kernel, conv_shape, pool_geo, inv, weight.dtype))


def _crop_to_pool(x, xt, geometry, conv_shape, pool_geo, name):
    """The convolution cut down to the output rows and columns a pool reads.

    Why: a floor-mode pool drops the last row / column of an odd-sized input (seed-000's
    9x9 convolution output before a 2x2 average pool: 17 of its 81 pixels, 21 % of the
    layer's work, are computed for nothing). Without gradients nothing else reads them,
    so the convolution computes only the top-left block the windows cover: its input is
    cut (a view) or its bottom / right padding reduced to the rows and columns that block
    needs. With gradients the layer's cache keeps the full geometry, so this is for
    inference only.

    Returns:
        ``(x, xt, geometry, conv_shape, pool_geo)``, unchanged when the pool reads every
        output (or has padding: then its windows are not simply the top-left block).
    """
    (kp_h, kp_w), (sp_h, sp_w) = pool_geo["kernel"], pool_geo["stride"]
    hp, wp = pool_geo["out_hw"]
    unchanged = x, xt, geometry, conv_shape, pool_geo
    if any(pool_geo["padding"]):
        return unchanged
    n, o, ho, wo = conv_shape
    hu, wu = min(ho, (hp - 1) * sp_h + kp_h), min(wo, (wp - 1) * sp_w + kp_w)
    if (hu, wu) == (ho, wo):
        return unchanged
    cropped = pool_geometry((n, o, hu, wu), pool_geo["kernel"], pool_geo["stride"], (0, 0), False, name)
    if cropped["out_hw"] != pool_geo["out_hw"]:       # (ceil mode: the last window is partial)
        return unchanged
    (kh, kw), (sh, sw), (dh, dw) = geometry["kernel"], geometry["stride"], geometry["dilation"]
    t, _, l, _ = geometry["pads"]
    h, w = x.shape[2:]
    # Input rows from the top the first hu outputs read (padding rows beyond h included).
    need_h, need_w = (hu - 1) * sh - t + (kh - 1) * dh + 1, (wu - 1) * sw - l + (kw - 1) * dw + 1
    x = x[:, :, :min(h, need_h), :min(w, need_w)]
    pads = (t, max(0, need_h - h), l, max(0, need_w - w))
    geometry = dict(geometry, pads=pads, out_hw=(hu, wu))
    return x, _nhwc(x), geometry, (n, o, hu, wu), cropped


def _conv_setup(x, weight, bias, stride, padding, dilation, groups, relu_input):
    """Checked arguments of a convolution: (x in the weight's dtype, its NHWC view, the
    geometry dict the kernels and the cache use, bias in the weight's dtype)."""
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
    geometry = dict(kernel=(kh, kw), stride=stride, dilation=dilation, pads=pads, out_hw=(ho, wo),
                    relu_input=bool(relu_input))
    if bias is not None:
        bias = bias.astype(weight.dtype, copy=False)
    return x, _nhwc(x), geometry, bias


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
        (N, C, H, W) in NHWC memory; when the forward had ``relu_input``, it is multiplied by
        ``x > 0`` (the folded ReLU backward).
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
    relu_mask = xt if geo.get("relu_input") else None
    if groups > 1 and cg == 1:
        gb = column_sums(g.reshape(-1, o)) if need_bias_grad else None
        gx, gw = depthwise_backward(g, xt, weight, geo, need_input_grad, need_weight_grad)
        if gx is not None and relu_mask is not None:  # its taps add into gx: mask once at the end
            parallel_for(n, lambda a, b: mask_by_positive(gx[a:b], relu_mask[a:b]), gx.nbytes)
    else:
        gw = gb = None
        if need_weight_grad or need_bias_grad:
            gw, gb = gemm_conv_param_grads(g, xt, weight.shape, groups, geo, need_weight_grad, need_bias_grad)
        gx = gemm_conv_input_grad(g, weight, groups, geo, xt.shape, relu_mask) if need_input_grad else None
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
    out = _recycle.empty((n, ho, wo, c), x.dtype)
    out.fill(value)
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
    gx = _recycle.zeros((n, h, w, c), dtype=grad_out.dtype)
    gx[:, src[0], src[1]] = _nhwc(grad_out)[:, dst[0], dst[1]]
    return _nchw(gx)


# ---------------------------------------------------------------------------------- softmax
def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, stable for large values; keeps x's dtype."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x - logsumexp(x) along ``axis``: x - max - log(sum(exp(x - max))), one exp pass."""
    shifted = x - x.max(axis=axis, keepdims=True)
    # exp of the shifted values is <= 1, so the sum cannot overflow.
    shifted -= np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    e /= np.sum(e, axis=axis, keepdims=True)
    return e
