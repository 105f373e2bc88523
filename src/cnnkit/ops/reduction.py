"""Reductions: sum, mean, max / min (with their indices), variance.

The gradient of a reduction spreads the upstream gradient back over the reduced
dimensions: evenly for sum and mean, to the selected element for max / min along a
dimension, shared among ties for a max / min over the whole tensor (PyTorch's rules).
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Function

__all__ = ["Sum", "Mean", "MaxAlong", "Extreme", "Var", "normalize_dims"]


def normalize_dims(dim, ndim: int) -> tuple[int, ...] | None:
    """``dim`` (None, an int or a sequence) as a sorted tuple of non-negative axes."""
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    out = []
    for d in dims:
        d = int(d)
        if not -max(ndim, 1) <= d < max(ndim, 1):
            raise IndexError(f"dimension {d} is out of range for a tensor with {ndim} dimensions")
        out.append(d % max(ndim, 1))
    return tuple(sorted(set(out)))


def _expand(g: np.ndarray, shape: tuple, axes, keepdim: bool) -> np.ndarray:
    """``g`` (the reduced shape) broadcast back to ``shape`` as a new array."""
    if axes is not None and not keepdim:
        g = np.expand_dims(g, axes)
    return np.broadcast_to(g, shape).copy()


class Sum(Function):
    """sum over ``dim``.  dx = g broadcast over the summed dimensions."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        axes = normalize_dims(dim, x.ndim)
        ctx.args = (x.shape, axes, keepdim)
        return np.sum(x, axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        shape, axes, keepdim = ctx.args
        return _expand(g, shape, axes, keepdim)


class Mean(Function):
    """mean over ``dim``.  dx = g / count broadcast over the averaged dimensions."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        axes = normalize_dims(dim, x.ndim)
        ctx.args = (x.shape, axes, keepdim)
        count = x.size if axes is None else int(np.prod([x.shape[a] for a in axes]))
        ctx.count = max(count, 1)
        return np.mean(x, axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        shape, axes, keepdim = ctx.args
        return _expand(g / np.asarray(ctx.count, g.dtype), shape, axes, keepdim)


class Var(Function):
    """Variance over ``dim`` with ``correction`` (1: unbiased, PyTorch's default).
    dx = g * 2 (x - mean) / (count - correction)."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False, correction=1):
        axes = normalize_dims(dim, x.ndim)
        count = x.size if axes is None else int(np.prod([x.shape[a] for a in axes]))
        centered = x - np.mean(x, axis=axes, keepdims=True)
        ctx.args = (axes, keepdim, count - correction)
        ctx.save_for_backward(centered)
        return np.sum(centered * centered, axis=axes, keepdims=keepdim) / np.asarray(count - correction, x.dtype)

    @staticmethod
    def backward(ctx, g):
        (centered,) = ctx.saved_tensors
        axes, keepdim, denom = ctx.args
        if axes is not None and not keepdim:
            g = np.expand_dims(g, axes)
        return g * centered * np.asarray(2.0 / denom, centered.dtype)


class MaxAlong(Function):
    """(values, indices) of the max (or min) along ``dim``.  dx = g at the selected index."""

    @staticmethod
    def forward(ctx, x, dim, keepdim=False, largest=True):
        axis = normalize_dims(dim, x.ndim)[0] if x.ndim else None
        if x.ndim and x.shape[axis] == 0:
            raise IndexError(f"max/min: dimension {dim} of shape {x.shape} is empty")
        if x.ndim == 0:
            ctx.args = (x.shape, None, keepdim)
            return x.copy(), np.zeros((), np.int64)
        idx = np.argmax(x, axis=axis) if largest else np.argmin(x, axis=axis)
        idx = np.expand_dims(idx, axis)
        values = np.take_along_axis(x, idx, axis=axis)
        ctx.args = (x.shape, axis, keepdim)
        ctx.save_for_backward(idx)
        if not keepdim:
            values, idx = np.squeeze(values, axis), np.squeeze(idx, axis)
        return values, idx.astype(np.int64, copy=False)

    @staticmethod
    def backward(ctx, g, g_idx=None):
        shape, axis, keepdim = ctx.args
        if axis is None:
            return g.copy()
        (idx,) = ctx.saved_tensors
        if not keepdim:
            g = np.expand_dims(g, axis)
        gx = np.zeros(shape, g.dtype)
        np.put_along_axis(gx, idx, g, axis=axis)
        return gx


class Extreme(Function):
    """max (or min) over ``dim`` without indices (``amax``; ``max()`` of the whole tensor).
    dx = g shared evenly among the elements equal to the result (PyTorch's rule)."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False, largest=True):
        axes = normalize_dims(dim, x.ndim)
        if x.size == 0:
            raise RuntimeError("max/min of an empty tensor: specify a dimension that is not empty")
        out = (np.max if largest else np.min)(x, axis=axes, keepdims=True)
        if ctx.needs_grad:
            ctx.save_for_backward(x == out)
            ctx.args = (axes, keepdim)
        return out if keepdim else (out.reshape(()) if axes is None else np.squeeze(out, axes))

    @staticmethod
    def backward(ctx, g):
        (hit,) = ctx.saved_tensors
        axes, keepdim = ctx.args
        if not keepdim:
            g = g.reshape((1,) * hit.ndim) if axes is None else np.expand_dims(g, axes)
        count = hit.sum(axis=axes, keepdims=True).astype(g.dtype)
        return hit * (g / count)
