"""Convolution layers: Conv2d and ZeroPad2d (PyTorch's names, arguments and state_dict keys)."""

from __future__ import annotations

import math

import numpy as np

from ..random import get_generator
from . import _kernels as F
from ..ops.conv import Conv2d as Conv, ZeroPad2d as Pad
from .._tensor import Tensor
from . import deferred
from .module import DEFAULT_DTYPE, Module, Parameter


def _check_4d(layer: Module, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer._short_name()}: expected a Tensor or a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{layer._short_name()}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{layer._short_name()}: expected a floating-point input, got dtype {x.dtype}")


class Conv2d(Module):
    """2-D convolution over an NCHW batch (cross-correlation, as in PyTorch).

    Computed as im2col + one GEMM (a batched GEMM when ``groups > 1``; depthwise
    convolutions use a tap loop of broadcast multiply-adds).

    Args:
        in_channels: C, channels of the input.
        out_channels: O, channels of the output (filters).
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw).
        padding: int, (ph, pw), ``'valid'`` (no padding) or ``'same'``. ``'same'`` works
            for any stride with TensorFlow's rule, computed from the input size at forward
            time: output size ceil(H / stride), the odd padding pixel at the bottom / right
            (identical to PyTorch's ``'same'`` for stride 1).
        dilation: int or (dh, dw).
        groups: split the channels into this many independent groups (``groups ==
            in_channels`` is a depthwise convolution).
        bias: add a learnable bias per output channel.
        generator: numpy Generator for the initial weights (default: cnnkit's global one,
            see ``cnnkit.manual_seed``).

    Attributes:
        weight: Parameter (O, C // groups, kh, kw), PyTorch's default initialisation
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)).
        bias: Parameter (O,) or None, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Shape:
        Input (N, C, H, W) -> output (N, O, Ho, Wo) with
        Ho = floor((H + pad_top + pad_bottom - dh * (kh - 1) - 1) / sh) + 1 (same for W).
        The output is an NCHW view of channels-last memory (see ``nn._kernels``).

    Returns:
        ``forward(x)`` the output Tensor (``ops.conv.Conv2d``: the forward and backward).
    """

    returns_fresh_output = True       # see nn.fusion: a ReLU after it may work in place

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, generator: np.random.Generator | None = None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = F.pair(kernel_size, "Conv2d kernel_size")
        self.stride = F.pair(stride, "Conv2d stride")
        self.dilation = F.pair(dilation, "Conv2d dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
            self.padding = padding
        else:
            self.padding = F.pair(padding, "Conv2d padding", minimum=0)
        fan_in = (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        gen = get_generator(generator)
        wshape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.weight = Parameter(gen.uniform(-bound, bound, size=wshape).astype(DEFAULT_DTYPE))
        if bias:
            self.bias = Parameter(gen.uniform(-bound, bound, size=(self.out_channels,)).astype(DEFAULT_DTYPE))
        else:
            self.bias = None

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def forward(self, x: Tensor) -> Tensor:
        pads, out_hw = self._geometry(x)
        # Inside a model's forward(): a ReLU or pool called next may join this
        # convolution's pass (nn.deferred).
        out = deferred.conv2d(x, self.weight, self.bias, self.stride, pads, self.dilation, self.groups, out_hw,
                              min_depth=2)
        if out is not None:
            return out
        return Conv.apply(x, self.weight, self.bias, self.stride, pads, self.dilation, self.groups)

    def _geometry(self, x: Tensor) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        """Check ``x`` against this layer; (its padding as (top, bottom, left, right), the
        output's (Ho, Wo))."""
        _check_4d(self, x)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self._short_name()}: expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        n, c, h, wd = x.shape
        pads = F.resolve_conv_padding(self.padding, (h, wd), self.kernel_size, self.stride, self.dilation)
        ho = F.conv_output_size(h, self.kernel_size[0], self.stride[0], pads[0] + pads[1], self.dilation[0])
        wo = F.conv_output_size(wd, self.kernel_size[1], self.stride[1], pads[2] + pads[3], self.dilation[1])
        if ho < 1 or wo < 1:
            raise ValueError(
                f"{self._short_name()}: input spatial size ({h}, {wd}) is too small for kernel_size "
                f"{self.kernel_size} with dilation {self.dilation} and padding {self.padding}"
            )
        return pads, (ho, wo)


class ZeroPad2d(Module):
    """Pad the last two axes with zeros (negative amounts crop), as ``torch.nn.ZeroPad2d``.

    Args:
        padding: int (all sides) or (left, right, top, bottom).

    Shape:
        Input (N, C, H, W) -> output (N, C, H + top + bottom, W + left + right).

    Returns:
        ``forward(x)`` the padded Tensor.
    """

    def __init__(self, padding):
        super().__init__()
        if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
            padding = (int(padding),) * 4
        elif isinstance(padding, (tuple, list)) and len(padding) == 4 and all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in padding
        ):
            padding = tuple(int(p) for p in padding)
        else:
            raise TypeError(f"ZeroPad2d: padding must be an int or (left, right, top, bottom), got {padding!r}")
        self.padding = padding

    def extra_repr(self) -> str:
        return f"{self.padding}"

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(self, x)
        left, right, top, bottom = self.padding
        if x.shape[2] + top + bottom < 1 or x.shape[3] + left + right < 1:
            raise ValueError(f"{self._short_name()}: padding leaves an empty output for input {tuple(x.shape)}")
        return Pad.apply(x, self.padding)
