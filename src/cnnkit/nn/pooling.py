"""Pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (PyTorch's names and rules)."""

from __future__ import annotations

import numpy as np

from . import _kernels as F
from ..ops import pool as ops
from .._tensor import Tensor
from . import deferred
from .module import Module


def _check_input(layer: Module, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer._short_name()}: expected a Tensor or a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{layer._short_name()}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{layer._short_name()}: expected a floating-point input, got dtype {x.dtype}")


def _pool_args(name, kernel_size, stride, padding):
    kernel = F.pair(kernel_size, f"{name} kernel_size")
    stride = kernel if stride is None else F.pair(stride, f"{name} stride")
    padding = F.pair(padding, f"{name} padding", minimum=0)
    for p, k in zip(padding, kernel):
        if p > k // 2:
            raise ValueError(f"{name}: padding should be at most half of kernel_size, got padding={padding} "
                             f"for kernel_size={kernel}")
    return kernel, stride, padding


def _check_size(layer, x, kernel, stride, padding, ceil_mode):
    h, w = x.shape[2], x.shape[3]
    ho = F.pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = F.pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"{layer._short_name()}: input spatial size ({h}, {w}) is too small for "
                         f"kernel_size {kernel} with padding {padding}")


class MaxPool2d(Module):
    """Maximum over sliding windows, as ``torch.nn.MaxPool2d``.

    Args:
        kernel_size: int or (kh, kw).
        stride: int or pair; default ``kernel_size``.
        padding: int or pair of implicit -inf padding, at most half the kernel.
        ceil_mode: round the output size up (the last window must still start inside the
            input or the left padding).

    Shape:
        Input (N, C, H, W) -> output (N, C, Ho, Wo),
        Ho = floor_or_ceil((H + 2 * ph - kh) / sh) + 1.

    Returns:
        ``forward(x)`` the pooled array; ``backward(grad_out)`` the gradient for x, routed
        to the first maximal element of each window (as PyTorch).
    """

    returns_fresh_output = True       # see nn.fusion: a ReLU after it may work in place

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_args("MaxPool2d", kernel_size, stride, padding)
        self.ceil_mode = bool(ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x)
        _check_size(self, x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        out = deferred.then_max_pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        if out is not None:
            return out
        return ops.MaxPool2d.apply(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)


class AvgPool2d(Module):
    """Mean over sliding windows, as ``torch.nn.AvgPool2d``.

    Args:
        kernel_size: int or (kh, kw).
        stride: int or pair; default ``kernel_size``.
        padding: int or pair of implicit zero padding, at most half the kernel.
        ceil_mode: round the output size up (PyTorch's rule).
        count_include_pad: when True the zero padding counts in the divisor; windows that
            run past the padded input (ceil_mode) are clipped either way.

    Shape:
        Input (N, C, H, W) -> output (N, C, Ho, Wo) (as MaxPool2d).

    """

    returns_fresh_output = True       # see nn.fusion: a ReLU after it may work in place

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_args("AvgPool2d", kernel_size, stride, padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x)
        _check_size(self, x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        out = deferred.then_avg_pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                     self.count_include_pad)
        if out is not None:
            return out
        return ops.AvgPool2d.apply(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                   self.count_include_pad)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool2d``: output i
    averages inputs floor(i*H/o) .. ceil((i+1)*H/o) - 1.

    Args:
        output_size: int or (oh, ow); a None entry keeps that input size.

    Shape:
        Input (N, C, H, W) -> output (N, C, oh, ow).

    """

    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
            ok = output_size >= 1
        elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
            ok = all(v is None or (isinstance(v, (int, np.integer)) and v >= 1) for v in output_size)
            output_size = tuple(output_size)
        else:
            ok = False
        if not ok:
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be a positive int or a pair of "
                             f"positive ints / None, got {output_size!r}")
        self.output_size = output_size

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x)
        return ops.AdaptiveAvgPool2d.apply(x, self.output_size)
