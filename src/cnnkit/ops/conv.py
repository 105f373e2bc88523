"""Convolution and zero padding.

conv2d (cross-correlation, as PyTorch), for an input x (N, C, H, W), weight w (O, C/g, kh, kw):

    y[n, o, i, j] = b[o] + sum_{c, p, q} w[o, c, p, q] * x[n, c, i*s + p*d, j*s + q*d]

    dL/dx = the transposed convolution of dL/dy with w   (col2im of g @ W)
    dL/dw[o, c, p, q] = sum_{n, i, j} g[n, o, i, j] * x[n, c, i*s + p*d, j*s + q*d]
    dL/db[o] = sum_{n, i, j} g[n, o, i, j]

The kernels (``nn._kernels``: im2col + GEMM, row taps, Winograd, depthwise tap loops) do it
in channels-last memory. Fused forms, chosen by ``nn.fusion``, share the same math:

- ``relu``: y = max(conv, 0) in the kernel's output pass; backward masks g by y > 0 first,
  unless ``grad_premasked`` (the consumer of y already folded that mask into its own
  backward);
- ``relu_input``: x is a ReLU's output; backward multiplies dL/dx by x > 0, i.e. returns the
  gradient with respect to that ReLU's input (whose own backward is then a pass-through);
- ``Conv2dReluMaxPool``: max_pool(relu(conv(x))) in one pass over the batch;
- ``Conv2dReluAvgPool``: avg_pool(relu(conv(x))) in one pass, without gradients only.
"""

from __future__ import annotations


from ..autograd.function import Function
from ..nn import _kernels as K
from .activation import relu_gradient

__all__ = ["Conv2d", "Conv2dReluAvgPool", "Conv2dReluMaxPool", "ZeroPad2d"]


class Conv2d(Function):
    """conv2d(x, weight, bias).  Options: stride, padding (pair, 'same', 'valid' or a
    (top, bottom, left, right) 4-tuple), dilation, groups, and the fusion options above."""

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                relu=False, relu_input=False, grad_premasked=False):
        out, cache = K.conv2d_forward(x, weight, bias, stride, padding, dilation, groups,
                                      keep_cache=ctx.needs_grad, relu=relu,
                                      relu_input=relu_input and ctx.needs_grad)
        if ctx.needs_grad:
            ctx.cache = cache
            ctx.relu = bool(relu)
            # The output is its own ReLU mask (y > 0); not needed when the consumer masks.
            ctx.save_for_backward(weight, out if (relu and not grad_premasked) else None)
        return out

    @staticmethod
    def backward(ctx, g):
        weight, out = ctx.saved_tensors
        if out is not None:              # the fused ReLU's backward first
            g = relu_gradient(g, out, ctx.grads_owned[0])
        need_x, need_w, need_b = (ctx.needs_input_grad + (False,))[:3]
        return K.conv2d_backward(g, ctx.cache, weight, need_input_grad=need_x, need_weight_grad=need_w,
                                 need_bias_grad=need_b)


class Conv2dReluMaxPool(Function):
    """max_pool2d(relu(conv2d(x, weight, bias))) in one pass (``nn._conv_pool``): the
    full-size convolution output is never kept. The pool's index marks windows whose maximum
    is not positive as dead, so its backward is already the gradient at the ReLU's input."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, pool_kernel, pool_stride, pool_padding,
                ceil_mode=False, relu_input=False):
        out, conv_cache, pool_cache = K.conv2d_relu_max_pool2d(
            x, weight, bias, stride, padding, dilation, groups, pool_kernel, pool_stride, pool_padding, ceil_mode,
            keep_cache=ctx.needs_grad, relu_input=relu_input and ctx.needs_grad)
        if ctx.needs_grad:
            ctx.caches = (conv_cache, pool_cache)
            ctx.save_for_backward(weight)
        return out

    @staticmethod
    def backward(ctx, g):
        (weight,) = ctx.saved_tensors
        conv_cache, pool_cache = ctx.caches
        g_conv = K.max_pool2d_backward(g, pool_cache)
        need_x, need_w, need_b = (ctx.needs_input_grad + (False,))[:3]
        return K.conv2d_backward(g_conv, conv_cache, weight, need_input_grad=need_x, need_weight_grad=need_w,
                                 need_bias_grad=need_b)


class Conv2dReluAvgPool(Function):
    """avg_pool2d(relu(conv2d(x, weight, bias))) in one pass (``nn._conv_pool``), the same
    values as the layers one by one. Inference only: ``nn.fusion`` uses it without
    gradients, so no graph ever holds it (its backward would need the full-size ReLU mask,
    which this pass does not keep)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, pool_kernel, pool_stride, pool_padding,
                ceil_mode=False, count_include_pad=True):
        if ctx.needs_grad:
            raise RuntimeError("Conv2dReluAvgPool is inference-only: with gradients, run Conv2d, ReLU and "
                               "AvgPool2d one by one")
        return K.conv2d_relu_avg_pool2d(x, weight, bias, stride, padding, dilation, groups, pool_kernel,
                                        pool_stride, pool_padding, ceil_mode, count_include_pad)

    @staticmethod
    def backward(ctx, g):  # pragma: no cover - never recorded (see forward)
        raise RuntimeError("Conv2dReluAvgPool has no backward")


class ZeroPad2d(Function):
    """Constant padding of H and W, ``(left, right, top, bottom)``; negative amounts crop.
    dL/dx = g cut back to x's extent."""

    @staticmethod
    def forward(ctx, x, padding, value=0.0):
        ctx.args = (x.shape, padding)
        return K.pad2d(x, padding, value)

    @staticmethod
    def backward(ctx, g):
        shape, padding = ctx.args
        return K.pad2d_backward(g, shape, padding)
