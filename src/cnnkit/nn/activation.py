"""Element-wise activations and (log-)softmax, each with its hand-written gradient.

Every activation keeps the input's dtype (float32 in, float32 out) and caches only what its
backward needs (a mask or its own output).
"""

from __future__ import annotations

import numpy as np

from . import _recycle
from ._parallel import parallel_for
from .functional import log_softmax, softmax  # the kernels live in functional.py
from .module import Module, is_grad_enabled

__all__ = ["ReLU", "ReLU6", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "softmax", "log_softmax", "sigmoid"]


def _as_float(layer: Module, x) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{layer._short_name()}: expected a floating-point input array, got dtype {x.dtype}")
    return x


def _check_dim(layer: Module, x: np.ndarray, dim: int) -> int:
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{layer._short_name()}: dim {dim} is out of range for an input with shape {x.shape}")
    return dim % x.ndim


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for large |x|; keeps the dtype."""
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return (np.where(x >= 0, 1, e) / (1 + e)).astype(x.dtype, copy=False)


def _split_rows(x: np.ndarray, run) -> None:
    """Call ``run(start, stop)`` on parts of x's first axis, one per kernel thread (NumPy's
    elementwise loops are single-threaded; big activations are worth two cores)."""
    parallel_for(x.shape[0] if x.ndim else 1, run, x.nbytes)


class _Activation(Module):
    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def _grad(self, grad_out: np.ndarray, cache) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        cache = self._need_cache(self._cache)
        if not self.needs_input_grad:
            return None
        return self._grad(grad_out, cache)


def _in_place(layer: Module, x: np.ndarray) -> bool:
    """Whether ``x`` is scratch the layer may overwrite (see ``Sequential``: the previous
    layer's fresh output or the next layer's fresh input gradient, seen by nobody else)."""
    return layer.__dict__.get("_input_is_scratch", False) and x.flags.writeable


class ReLU(_Activation):
    """max(x, 0).

    Args:
        inplace: accepted for PyTorch compatibility and ignored: the caller's array is never
            modified. Inside a ``Sequential``, a ReLU after a layer whose output nobody else
            sees (Conv2d, Linear, BatchNorm, pooling) works in place on it automatically, and
            so does its backward on the next layer's fresh gradient: no new array, one pass.
            After a Conv2d it is fused into the convolution's output pass (no pass at all).

    Shape:
        any -> same.
    """

    overwrites_scratch = True

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_float(self, x)
        if _in_place(self, x):
            def clip(start, stop):
                part = slice(start, stop) if x.ndim else ()
                np.maximum(x[part], 0, out=x[part])

            if not self.__dict__.get("_input_is_rectified", False):  # else fused into the conv
                _split_rows(x, clip)
            # The output is the gradient's mask too (out > 0 where x > 0): keep it instead.
            self._cache = x if is_grad_enabled() else None
            return x
        # Inside no_grad() the cache is dropped right after forward: do not build the mask.
        mask = _recycle.empty_like(x, dtype=bool) if is_grad_enabled() else None
        out = _recycle.empty_like(x)  # same memory layout as x (e.g. NHWC under an NCHW view)

        def run(start, stop):
            part = slice(start, stop) if x.ndim else ()
            if mask is not None:
                np.greater(x[part], 0, out=mask[part])
            np.maximum(x[part], 0, out=out[part])  # a Python 0 keeps the dtype (NEP 50)

        _split_rows(x, run)
        self._cache = mask
        return out

    def _grad(self, grad_out, cache):
        grad_out = np.asarray(grad_out)
        # cache: a bool mask, or the (in-place) output, whose positive entries are the mask.
        if grad_out.shape != cache.shape:
            return grad_out * (cache if cache.dtype == bool else cache > 0)
        gx = grad_out if _in_place(self, grad_out) else _recycle.empty_like(grad_out)

        def run(start, stop):
            part = slice(start, stop) if gx.ndim else ()
            mask = cache[part] if cache.dtype == bool else cache[part] > 0
            np.multiply(grad_out[part], mask, out=gx[part])

        _split_rows(gx, run)
        return gx


class ReLU6(_Activation):
    """min(max(x, 0), 6).

    Args:
        inplace: accepted for PyTorch compatibility and ignored.

    Shape:
        any -> same.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_float(self, x)
        # The mask costs as much as the clip itself: skip it inside no_grad(), where the
        # cache is dropped right after forward anyway.
        self._cache = (x > 0) & (x < 6) if is_grad_enabled() else None
        return np.clip(x, 0, 6)

    def _grad(self, grad_out, mask):
        return grad_out * mask


class LeakyReLU(_Activation):
    """x for x > 0, negative_slope * x otherwise.

    Args:
        negative_slope: slope for negative inputs (default 0.01).
        inplace: accepted for PyTorch compatibility and ignored.

    Shape:
        any -> same.
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_float(self, x)
        mask = x > 0
        self._cache = mask
        return np.where(mask, x, x * x.dtype.type(self.negative_slope))

    def _grad(self, grad_out, mask):
        return np.where(mask, grad_out, grad_out * grad_out.dtype.type(self.negative_slope))

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), computed without overflow for large |x|.

    Shape:
        any -> same.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = sigmoid(_as_float(self, x))
        self._cache = out
        return out

    def _grad(self, grad_out, out):
        return grad_out * out * (1 - out)


class Tanh(_Activation):
    """Hyperbolic tangent.

    Shape:
        any -> same.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = np.tanh(_as_float(self, x))
        self._cache = out
        return out

    def _grad(self, grad_out, out):
        return grad_out * (1 - out * out)


class _AlongDim(_Activation):
    """An activation normalised along ``dim`` (the subclass's ``_kernel(x, axis)``), caching
    its output."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_float(self, x)
        axis = _check_dim(self, x, self.dim)
        out = self._kernel(x, axis)
        self._cache = (out, axis)
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """exp(x) / sum(exp(x)) along ``dim`` (max-shifted, so it never overflows).

    Args:
        dim: the dimension that sums to 1 (e.g. 1 for (N, C) logits or -1).

    Shape:
        any -> same.
    """

    _kernel = staticmethod(softmax)

    def _grad(self, grad_out, cache):
        out, axis = cache
        # d softmax: s * (g - sum(g * s))
        return out * (grad_out - (grad_out * out).sum(axis=axis, keepdims=True))


class LogSoftmax(_AlongDim):
    """log(softmax(x)) along ``dim``, computed stably as x - logsumexp(x).

    Args:
        dim: the dimension normalised over.

    Shape:
        any -> same.
    """

    _kernel = staticmethod(log_softmax)

    def _grad(self, grad_out, cache):
        out, axis = cache
        # d log_softmax: g - softmax * sum(g)
        return grad_out - np.exp(out) * grad_out.sum(axis=axis, keepdims=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
