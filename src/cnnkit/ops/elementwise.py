"""Elementwise arithmetic with NumPy broadcasting: + - * / ** and the unary maths.

The gradient of a broadcast input is the upstream gradient summed over the dimensions the
broadcast added or stretched (``unbroadcast``).
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Function

__all__ = ["unbroadcast", "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Exp", "Log", "Sqrt", "Abs", "Clamp",
           "Maximum", "Minimum"]


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` down to ``shape``: over leading dimensions broadcasting added, and over
    dimensions of size 1 it stretched. Returns ``g`` itself when the shapes already agree."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, s in enumerate(shape) if s == 1 and g.shape[i + extra] != 1)
    out = g.sum(axis=axes, keepdims=True) if axes else g
    return out.reshape(shape)


class Add(Function):
    """a + b.  da = g, db = g (each summed to its input's shape)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (np.shape(a), np.shape(b))
        return np.add(a, b)

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(g, sb) if ctx.needs_input_grad[1] else None)


class Sub(Function):
    """a - b.  da = g, db = -g."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (np.shape(a), np.shape(b))
        return np.subtract(a, b)

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(-g, sb) if ctx.needs_input_grad[1] else None)


class Mul(Function):
    """a * b.  da = g * b, db = g * a."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.multiply(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return (unbroadcast(g * b, np.shape(a)) if ctx.needs_input_grad[0] else None,
                unbroadcast(g * a, np.shape(b)) if ctx.needs_input_grad[1] else None)


class Div(Function):
    """a / b.  da = g / b, db = -g * a / b^2."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.true_divide(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, np.shape(a)) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), np.shape(b)) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    """-a.  da = -g."""

    @staticmethod
    def forward(ctx, a):
        return np.negative(a)

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    """a ** b.  da = g * b * a^(b-1), db = g * a^b * log(a)."""

    @staticmethod
    def forward(ctx, a, b):
        out = np.power(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g * b * np.power(a, b - 1), np.shape(a))
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(g * out * np.log(a), np.shape(b))
        return ga, gb


class Exp(Function):
    """exp(a).  da = g * exp(a) (the output, saved)."""

    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out


class Log(Function):
    """log(a).  da = g / a."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / a


class Sqrt(Function):
    """sqrt(a).  da = g / (2 sqrt(a))."""

    @staticmethod
    def forward(ctx, a):
        out = np.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g / (2 * out)


class Abs(Function):
    """|a|.  da = g * sign(a) (0 at 0, as PyTorch)."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * np.sign(a).astype(g.dtype, copy=False)


class Clamp(Function):
    """min(max(a, low), high).  da = g where low <= a <= high, else 0 (PyTorch's rule)."""

    @staticmethod
    def forward(ctx, a, low=None, high=None):
        out = a
        if low is not None:
            out = np.maximum(out, np.asarray(low, dtype=a.dtype))
        if high is not None:
            out = np.minimum(out, np.asarray(high, dtype=a.dtype))
        if ctx.needs_grad:
            keep = np.ones(a.shape, bool)
            if low is not None:
                keep &= a >= low
            if high is not None:
                keep &= a <= high
            ctx.save_for_backward(keep)
        return out if out is not a else a.copy()

    @staticmethod
    def backward(ctx, g):
        (keep,) = ctx.saved_tensors
        return g * keep


class _Extremum(Function):
    """Elementwise max / min of two tensors: the gradient goes to the chosen one (half to
    each on ties, as PyTorch)."""

    pick = staticmethod(np.maximum)

    @classmethod
    def forward(cls, ctx, a, b):
        ctx.save_for_backward(a, b)
        return cls.pick(a, b)

    @classmethod
    def backward(cls, ctx, g):
        a, b = ctx.saved_tensors
        first = (a > b) if cls.pick is np.maximum else (a < b)
        share = np.where(first, 1.0, np.where(a == b, 0.5, 0.0)).astype(g.dtype)
        ga = unbroadcast(g * share, np.shape(a)) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * (1 - share), np.shape(b)) if ctx.needs_input_grad[1] else None
        return ga, gb


class Maximum(_Extremum):
    pick = staticmethod(np.maximum)


class Minimum(_Extremum):
    pick = staticmethod(np.minimum)
