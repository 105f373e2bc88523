"""Activations, each with its derivative.

relu:        y = max(x, 0)                  dx = g * (x > 0)
relu6:       y = min(max(x, 0), 6)          dx = g * (0 < x < 6)
leaky_relu:  y = x if x > 0 else a x        dx = g if x > 0 else a g
sigmoid:     y = 1 / (1 + exp(-x))          dx = g * y * (1 - y)
tanh:        y = tanh(x)                    dx = g * (1 - y^2)
softmax:     y = exp(x) / sum exp(x)        dx = y * (g - sum(g * y))
log_softmax: y = x - logsumexp(x)           dx = g - softmax(x) * sum(g)

Big activations are split over the kernel threads (NumPy's elementwise loops use one core).
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..nn import _recycle
from ..nn._kernels import log_softmax, softmax
from ..nn._parallel import parallel_for

__all__ = ["ReLU", "ReLU6", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "sigmoid", "relu_gradient"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for large |x|; keeps the dtype."""
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return (np.where(x >= 0, 1, e) / (1 + e)).astype(x.dtype, copy=False)


def _split_rows(x: np.ndarray, run) -> None:
    """Call ``run(start, stop)`` on parts of x's first axis, one per kernel thread."""
    parallel_for(x.shape[0] if x.ndim else 1, run, x.nbytes)


class ReLU(Function):
    """Options (set by ``nn.fusion`` inside a Sequential, never by users): ``in_place`` — x is
    a fresh output nobody else sees, rectified in place; ``rectified`` — the producer
    already applied the ReLU in its output pass; ``grad_premasked`` — the consumer of y
    folded this backward into its own, so this one passes the gradient through."""

    @staticmethod
    def forward(ctx, x, in_place=False, rectified=False, grad_premasked=False):
        keep = ctx.needs_grad and not grad_premasked
        if in_place and x.flags.writeable:
            if not rectified:
                def clip(start, stop):
                    part = slice(start, stop) if x.ndim else ()
                    np.maximum(x[part], 0, out=x[part])

                _split_rows(x, clip)
            # The output is the gradient's mask too (y > 0 where x > 0).
            ctx.mask = x if keep else None
            return x
        mask = _recycle.empty_like(x, dtype=bool) if keep else None
        out = _recycle.empty_like(x)  # same memory layout as x (e.g. NHWC under an NCHW view)

        def run(start, stop):
            part = slice(start, stop) if x.ndim else ()
            if mask is not None:
                np.greater(x[part], 0, out=mask[part])
            np.maximum(x[part], 0, out=out[part])  # a Python 0 keeps the dtype (NEP 50)

        _split_rows(x, run)
        ctx.mask = mask
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.mask is None:           # folded into the consumer's backward
            return g
        return relu_gradient(g, ctx.mask, ctx.grads_owned[0])


def relu_gradient(g: np.ndarray, mask: np.ndarray, owned: bool) -> np.ndarray:
    """``g * (mask > 0)``: a ReLU's backward. ``mask``: a bool array, or the ReLU's output
    (positive exactly where its input was). A gradient nobody else holds (``owned``: the
    consumer's fresh array) is masked in place; the rows are split over the kernel threads."""
    if g.shape != mask.shape:
        return g * (mask if mask.dtype == bool else mask > 0)
    gx = g if owned else _recycle.empty_like(g)

    def run(start, stop):
        part = slice(start, stop) if gx.ndim else ()
        m = mask[part] if mask.dtype == bool else mask[part] > 0
        np.multiply(g[part], m, out=gx[part])

    _split_rows(gx, run)
    return gx


class ReLU6(Function):
    @staticmethod
    def forward(ctx, x):
        if ctx.needs_grad:
            ctx.save_for_backward((x > 0) & (x < 6))
        return np.clip(x, 0, 6)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask


class LeakyReLU(Function):
    @staticmethod
    def forward(ctx, x, negative_slope=0.01):
        mask = x > 0
        ctx.save_for_backward(mask)
        ctx.slope = negative_slope
        return np.where(mask, x, x * x.dtype.type(negative_slope))

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return np.where(mask, g, g * g.dtype.type(ctx.slope))


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        out = sigmoid(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out * (1 - out)


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (1 - out * out)


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis):
        out = softmax(x, axis)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return out * (g - (g * out).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis):
        out = log_softmax(x, axis)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g - np.exp(out) * g.sum(axis=ctx.axis, keepdims=True)
