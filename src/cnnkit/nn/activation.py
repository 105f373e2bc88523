"""Activation layers: thin modules over ``cnnkit.ops.activation`` (where the derivatives are).

Every activation keeps the input's dtype (float32 in, float32 out).
"""

from __future__ import annotations

import numpy as np

from ..ops import activation as ops
from ..ops.activation import sigmoid  # noqa: F401  (array helper used by the losses)
from .._tensor import Tensor
from ._kernels import log_softmax, softmax  # noqa: F401  (array kernels, historic import place)
from . import deferred
from .module import Module

__all__ = ["ReLU", "ReLU6", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "softmax", "log_softmax", "sigmoid"]


def _as_float(layer: Module, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer._short_name()}: expected a Tensor or a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{layer._short_name()}: expected a floating-point input array, got dtype {x.dtype}")
    return x


def _check_dim(layer: Module, x: Tensor, dim: int) -> int:
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{layer._short_name()}: dim {dim} is out of range for an input with shape {tuple(x.shape)}")
    return dim % x.ndim


class ReLU(Module):
    """max(x, 0).

    Args:
        inplace: accepted for PyTorch compatibility and ignored: the caller's tensor is never
            modified. Inside a ``Sequential``, a ReLU after a layer whose output nobody else
            sees (Conv2d, Linear, BatchNorm, pooling) works in place on it automatically, and
            its backward on the next layer's fresh gradient; after a Conv2d it is fused into
            the convolution's output pass (``nn.fusion``).

    Shape:
        any -> same.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        out = deferred.then_relu(x)
        if out is not None:
            return out
        return ops.ReLU.apply(_as_float(self, x))


class ReLU6(Module):
    """min(max(x, 0), 6).

    Args:
        inplace: accepted for PyTorch compatibility and ignored.

    Shape:
        any -> same.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return ops.ReLU6.apply(_as_float(self, x))


class LeakyReLU(Module):
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

    def forward(self, x: Tensor) -> Tensor:
        return ops.LeakyReLU.apply(_as_float(self, x), self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow for large |x|.

    Shape:
        any -> same.
    """

    def forward(self, x: Tensor) -> Tensor:
        return ops.Sigmoid.apply(_as_float(self, x))


class Tanh(Module):
    """Hyperbolic tangent.

    Shape:
        any -> same.
    """

    def forward(self, x: Tensor) -> Tensor:
        return ops.Tanh.apply(_as_float(self, x))


class Softmax(Module):
    """exp(x) / sum(exp(x)) along ``dim`` (max-shifted, so it never overflows).

    Args:
        dim: the dimension that sums to 1 (e.g. 1 for (N, C) logits or -1).

    Shape:
        any -> same.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_float(self, x)
        return ops.Softmax.apply(x, _check_dim(self, x, self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log(softmax(x)) along ``dim``, computed stably as x - logsumexp(x).

    Args:
        dim: the dimension normalised over.

    Shape:
        any -> same.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = _as_float(self, x)
        return ops.LogSoftmax.apply(x, _check_dim(self, x, self.dim))
