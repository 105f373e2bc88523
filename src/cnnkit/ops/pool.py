"""Pooling.

max_pool2d: y = max over each window; dL/dx = g routed to the window's winning tap (the
first maximum). With ``relu_input`` (x is a ReLU's output) windows whose maximum is not
positive get no gradient, folding that ReLU's backward into this one.

avg_pool2d: y = mean over each window (the divisor counts the padding when
``count_include_pad``); dL/dx = g / window size spread over the window.

adaptive_avg_pool2d: the same with PyTorch's adaptive windows for a target output size.
"""

from __future__ import annotations

from ..autograd.function import Function
from ..nn import _kernels as K

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


class MaxPool2d(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding=0, ceil_mode=False, relu_input=False):
        out, cache = K.max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, keep_cache=ctx.needs_grad,
                                          relu_input=relu_input and ctx.needs_grad)
        ctx.cache = cache
        return out

    @staticmethod
    def backward(ctx, g):
        return K.max_pool2d_backward(g, ctx.cache)


class AvgPool2d(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding=0, ceil_mode=False, count_include_pad=True):
        out, cache = K.avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
        ctx.cache = cache if ctx.needs_grad else None
        return out

    @staticmethod
    def backward(ctx, g):
        return K.avg_pool2d_backward(g, ctx.cache)


class AdaptiveAvgPool2d(Function):
    @staticmethod
    def forward(ctx, x, output_size):
        out, cache = K.adaptive_avg_pool2d_forward(x, output_size)
        ctx.cache = cache if ctx.needs_grad else None
        return out

    @staticmethod
    def backward(ctx, g):
        return K.adaptive_avg_pool2d_backward(g, ctx.cache)
