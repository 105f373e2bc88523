"""Linear (fully connected) layer, Flatten and Identity."""

from __future__ import annotations

import math

import numpy as np

from . import functional, init
from ..ops import linear as ops
from .._tensor import Tensor
from .module import DEFAULT_DTYPE, Module, Parameter

__all__ = ["Linear", "Flatten", "Identity"]


def _check_float(layer: Module, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer._short_name()}: expected a Tensor or a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"{layer._short_name()}: expected a floating-point input array, got dtype {x.dtype} "
            f"(convert images with x.astype(np.float32) / 255)"
        )
    return x


class Linear(Module):
    """Fully connected layer: ``y = x @ weight.T + bias``.

    Args:
        in_features: size of the last input dimension.
        out_features: size of the last output dimension.
        bias: learn an additive bias (default True).
        generator: optional ``numpy.random.Generator`` for the initialisation (default: cnnkit's
            global generator). Initialisation is PyTorch's: weight ~ kaiming_uniform(a=sqrt(5)),
            i.e. U(-1/sqrt(in_features), 1/sqrt(in_features)), and bias ~ the same range.

    Shape:
        input (*, in_features) -> output (*, out_features); any leading dimensions.
        weight (out_features, in_features), bias (out_features,), float32.

    Returns:
        ``forward`` returns an array of the weight's dtype (an input of another floating dtype
        is cast once to it, never the other way, so a float32 model stays float32).
    """

    returns_fresh_output = True       # see nn.fusion: a ReLU after it may work in place

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 generator: np.random.Generator | None = None):
        super().__init__()
        if int(in_features) <= 0 or int(out_features) <= 0:
            raise ValueError(
                f"Linear: in_features and out_features must be positive, got {in_features}, {out_features}"
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), DEFAULT_DTYPE))
        if bias:
            self.bias = Parameter(np.empty((self.out_features,), DEFAULT_DTYPE))
        else:
            self.bias = None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: np.random.Generator | None = None) -> None:
        """Re-draw weight and bias with PyTorch's default scheme."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        _check_float(self, x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self._short_name()}: expected input with last dimension {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        return ops.Linear.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Flatten dimensions ``start_dim`` .. ``end_dim`` into one (a view when possible).

    An (N, C, H, W) input whose memory is NHWC (cnnkit's conv / pooling outputs) is copied
    to PyTorch's (C, H, W) order; the gradient is a view of the upstream one.

    Args:
        start_dim: first dimension to flatten (default 1, keeping the batch dimension).
        end_dim: last dimension to flatten (default -1).

    Shape:
        (N, C, H, W) -> (N, C*H*W) with the defaults.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._short_name()}: expected a Tensor or a numpy array, got {type(x).__name__}")
        nd = x.ndim
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < max(nd, 1) and 0 <= e < max(nd, 1)) or s > e:
            raise ValueError(
                f"{self._short_name()}: cannot flatten dims {self.start_dim}..{self.end_dim} "
                f"of an input with shape {tuple(x.shape)}"
            )
        return functional.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input unchanged; backward returns the upstream gradient unchanged.

    Any constructor arguments are accepted and ignored (as in PyTorch), so it can stand in
    for another layer.

    Shape:
        any -> same.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
