"""Batch normalisation over every dimension but the channels (dim 1).

Training (batch statistics), per channel over the m = N*H*W values:

    mean = sum(x) / m,  var = sum((x - mean)^2) / m,  x_hat = (x - mean) / sqrt(var + eps)
    y = w * x_hat + b
    dL/dx = w / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))
    dL/dw = sum(g * x_hat),  dL/db = sum(g)

Evaluation (running statistics, constants): y = (x - running_mean) * w / sqrt(running_var
+ eps) + b, an affine map per channel: dL/dx = g * w / sqrt(running_var + eps).

The running statistics are updated in place during the forward pass (training only).
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..nn import _recycle

EVAL_BLOCK_BYTES = 256 << 10

__all__ = ["BatchNorm", "running_affine", "eval_affine_channels_last"]


def _bshape(x: np.ndarray) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against x: (1, C, 1, ...)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def running_affine(running_mean, running_var, weight, bias, eps, dtype) -> tuple:
    """The eval-mode map ``out = (x - mean) * scale (+ shift)`` from running statistics:
    ``(mean, inv_std, scale, shift)``, each (C,) in ``dtype``; shift None without bias."""
    inv_std = (1 / np.sqrt(running_var + eps)).astype(dtype, copy=False)
    scale = inv_std * weight if weight is not None else inv_std
    shift = bias.astype(dtype, copy=False) if bias is not None else None
    return running_mean.astype(dtype, copy=False), inv_std, scale.astype(dtype, copy=False), shift


def eval_affine_channels_last(x: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                               shift: np.ndarray | None) -> np.ndarray:
    """(x - mean) * scale (+ shift) per channel, for an NCHW view of channels-last memory
    (what the conv kernels return). Why not the plain broadcast: over (N, C, H, W) with
    channels last NumPy's inner loop is only C values long (16 to 40 in a bottleneck), and
    its overhead costs as much as the arithmetic. Here the image rows are (W*C,) runs with
    the per-channel vectors tiled to that length, and the three passes run on cache-sized
    blocks of rows, so the output is read back from cache. Returns the same layout."""
    n, c, h, w = x.shape
    rows = x.transpose(0, 2, 3, 1).reshape(n * h, w * c)
    mean_row, scale_row = np.tile(mean, w), np.tile(scale, w)
    shift_row = None if shift is None else np.tile(shift, w)
    out = _recycle.empty((n, h, w, c), dtype=x.dtype)
    out_rows = out.reshape(n * h, w * c)
    step = max(1, EVAL_BLOCK_BYTES // (w * c * x.itemsize))
    for r0 in range(0, n * h, step):
        dst = out_rows[r0:r0 + step]
        np.subtract(rows[r0:r0 + step], mean_row, out=dst)
        dst *= scale_row
        if shift_row is not None:
            dst += shift_row
    return out.transpose(0, 3, 1, 2)

class BatchNorm(Function):
    """batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps).

    ``momentum`` is the factor of the running-statistics update (the layer turns
    ``momentum=None``, a cumulative average, into 1 / batches seen)."""

    @staticmethod
    def forward(ctx, x, weight=None, bias=None, running_mean=None, running_var=None, training=False,
                momentum=0.1, eps=1e-5):
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = _bshape(x)
        count = x.size // x.shape[1]
        use_batch_stats = training or running_mean is None
        if use_batch_stats:
            if count <= 1:
                raise ValueError(
                    f"batch_norm: expected more than 1 value per channel when training, got input of shape {x.shape}"
                )
            # Reductions accumulate in float64: the conv kernels hand over channels-last
            # memory, where a float32 running sum over N*H*W loses ~10x accuracy; on such views
            # the float64 accumulator costs no more time (measured), only C-sized results kept.
            mean = x.mean(axis=axes, dtype=np.float64).astype(x.dtype)
            xc = x - mean.reshape(bshape)
            var = np.mean(xc * xc, axis=axes, dtype=np.float64).astype(x.dtype)  # biased
            if training and running_mean is not None:
                unbiased = var * (count / (count - 1))
                running_mean *= 1 - momentum
                running_mean += (momentum * mean).astype(running_mean.dtype, copy=False)
                running_var *= 1 - momentum
                running_var += (momentum * unbiased).astype(running_var.dtype, copy=False)
            inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype, copy=False)
            xc *= inv_std.reshape(bshape)  # xc is a fresh array: normalise it in place into x_hat
            x_hat = xc
            if weight is not None:
                out = x_hat * weight.reshape(bshape)
                out += bias.reshape(bshape)
            else:
                out = x_hat.copy()
            if ctx.needs_grad:
                ctx.save_for_backward(x_hat, None, inv_std, weight)
                ctx.args = (True, axes, count, None)
            return out
        # Running statistics: a per-channel affine map, out = (x - mean) * scale + bias.
        # (Folding the mean into the shift would save one pass but cancels catastrophically
        # in float32 when |mean| >> std; measured: 2 % error in VGG input gradients.)
        mean, inv_std, scale, shift = running_affine(running_mean, running_var, weight, bias, eps, x.dtype)
        if x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous:
            out = eval_affine_channels_last(x, mean, scale, shift)
        else:
            out = x - mean.reshape(bshape)
            out *= scale.reshape(bshape)
            if shift is not None:
                out += shift.reshape(bshape)
        if ctx.needs_grad:
            # x_hat is only needed for the weight gradient: rebuilt in backward if asked for.
            ctx.save_for_backward(None, x, inv_std, weight)
            ctx.args = (False, axes, count, mean)
        return out

    @staticmethod
    def backward(ctx, g):
        x_hat, x, inv_std, weight = ctx.saved_tensors
        batch_stats, axes, count, mean = ctx.args
        needs = ctx.needs_input_grad + (False,) * 3
        need_x, need_w, need_b = needs[0], needs[1], needs[2]
        bshape = _bshape(g)
        if x_hat is None and need_w:
            x_hat = (x - mean.reshape(bshape)) * inv_std.reshape(bshape)
        sum_g = g.sum(axis=axes, dtype=np.float64).astype(g.dtype)
        sum_g_xhat = None if x_hat is None else (g * x_hat).sum(axis=axes, dtype=np.float64).astype(g.dtype)
        gw = sum_g_xhat if need_w else None
        gb = sum_g if need_b else None
        if not need_x:
            return None, gw, gb
        scale = inv_std if weight is None else inv_std * weight
        if not batch_stats:
            # Running statistics are constants: the layer is an affine map per channel.
            return g * scale.reshape(bshape), gw, gb
        gi = x_hat * (sum_g_xhat / count).reshape(bshape)
        gi += (sum_g / count).reshape(bshape)
        np.subtract(g, gi, out=gi)
        gi *= scale.reshape(bshape)
        return gi, gw, gb
