"""Matrix products.

linear: y = x @ W^T + b, x (*, in), W (out, in)
    dL/dx = g @ W,   dL/dW = g^T @ x (over all leading dims),   dL/db = sum of g's rows

matmul: y = a @ b with NumPy's rules (1-D operands, batch broadcasting)
    dL/da = g @ b^T,  dL/db = a^T @ g (each summed back over broadcast batch dims)
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..nn._conv_kernels import column_sums
from ..nn._dense import matmul, two_matmuls
from ..nn._parallel import parallel_matmul
from .elementwise import unbroadcast

__all__ = ["Linear", "MatMul"]


class Linear(Function):
    @staticmethod
    def forward(ctx, x, weight, bias=None):
        if x.dtype != weight.dtype:
            x = x.astype(weight.dtype)
        out = matmul(x, weight.T)
        if bias is not None:
            out += bias
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        need_b = len(ctx.needs_input_grad) > 2 and ctx.needs_input_grad[2]
        out_f, in_f = w.shape
        g2 = g.reshape(-1, out_f)
        x2 = x.reshape(-1, in_f)
        gx = gw = gb = None
        if need_w and need_x:
            # Two GEMMs of the same cost computed at the same time on the kernel threads.
            gw, gx = two_matmuls(g2.T, x2, g2, w)
        elif need_w:
            gw = parallel_matmul(g2.T, x2)
        elif need_x:
            gx = parallel_matmul(g2, w)
        if need_b:
            # ones @ g (a GEMV) instead of g.sum(axis=0), which reduces along the strided axis.
            gb = column_sums(np.ascontiguousarray(g2))
        if gx is not None:
            gx = gx.reshape(*g.shape[:-1], in_f)
        return gx, gw, gb


class MatMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(np.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return ga, gb
