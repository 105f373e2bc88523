"""Shape operations: reshape / view, permute, indexing, concatenation, stacking, padding,
type casts. Their backward moves the gradient back to where each element came from."""

from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..nn._im2col import nchw, nhwc

__all__ = ["Reshape", "Permute", "GetItem", "Cat", "Stack", "Cast", "Pad", "Expand", "Clone", "Flatten"]


class Reshape(Function):
    """x.reshape(shape) (a view when the memory allows).  dx = g.reshape(x.shape)."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.in_shape)


class Permute(Function):
    """x.transpose(axes) (a view).  dx = g transposed by the inverse permutation."""

    @staticmethod
    def forward(ctx, x, axes):
        ctx.inverse = tuple(np.argsort(axes))
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(ctx.inverse)


def _is_basic(index) -> bool:
    """Basic indexing (ints, slices, None, Ellipsis) selects each element at most once."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


class GetItem(Function):
    """x[index].  dx = zeros with g put back at the selected places (added, for indices
    that repeat an element)."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.args = (x.shape, x.dtype, index)
        out = x[index]
        return out

    @staticmethod
    def backward(ctx, g):
        shape, dtype, index = ctx.args
        gx = np.zeros(shape, g.dtype)
        if _is_basic(index):
            gx[index] = g
        else:
            np.add.at(gx, index, g)
        return gx


class Cat(Function):
    """concatenate(arrays, dim).  Each input's gradient is its slice of g."""

    @staticmethod
    def forward(ctx, *arrays, dim=0):
        ref = arrays[0]
        axis = dim % ref.ndim
        ctx.args = (axis, [a.shape[axis] for a in arrays])
        if ref.ndim == 4 and axis == 1 and any(nhwc(a).flags.c_contiguous for a in arrays):
            # Channels-last memory (the conv kernels' outputs) joined as such: the next
            # convolution then reads it without a copy.
            return nchw(np.concatenate([nhwc(a) for a in arrays], axis=3))
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        axis, sizes = ctx.args
        return tuple(np.split(g, np.cumsum(sizes)[:-1], axis=axis))


class Stack(Function):
    """stack(arrays, dim).  Each input's gradient is g indexed at its position."""

    @staticmethod
    def forward(ctx, *arrays, dim=0):
        out = np.stack(arrays, axis=dim)
        ctx.axis = dim % out.ndim
        return out

    @staticmethod
    def backward(ctx, g):
        return tuple(np.moveaxis(g, ctx.axis, 0))


class Clone(Function):
    """A copy (C-contiguous).  dx = g."""

    @staticmethod
    def forward(ctx, x):
        return np.array(x, copy=True, order="C")

    @staticmethod
    def backward(ctx, g):
        return g


class Cast(Function):
    """x.astype(dtype).  dx = g cast back to x's dtype."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.in_dtype)


class Expand(Function):
    """broadcast_to(x, shape) (a read-only view).  dx = g summed over the stretched dimensions."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return np.broadcast_to(x, shape)

    @staticmethod
    def backward(ctx, g):
        from .elementwise import unbroadcast

        return unbroadcast(g, ctx.in_shape)


class Pad(Function):
    """Constant padding of the last dimensions, PyTorch's ``pad`` order: ``(left, right,
    top, bottom, ...)`` from the last dimension backwards; negative amounts crop.
    dx = g cut back to x's extent."""

    @staticmethod
    def forward(ctx, x, pad, value=0.0):
        if len(pad) % 2 or len(pad) // 2 > x.ndim:
            raise ValueError(f"pad: expected an even number of amounts for at most {x.ndim} dimensions, got {pad}")
        widths = [(0, 0)] * x.ndim
        for k in range(len(pad) // 2):
            widths[x.ndim - 1 - k] = (int(pad[2 * k]), int(pad[2 * k + 1]))
        src, dst, out_shape = [], [], []
        for n, (lo, hi) in zip(x.shape, widths):
            size = n + lo + hi
            if size < 0:
                raise ValueError(f"pad: amounts {pad} leave a negative size for input shape {x.shape}")
            s0, s1 = max(-lo, 0), n - max(-hi, 0)
            src.append(slice(s0, max(s1, s0)))
            dst.append(slice(max(lo, 0), max(lo, 0) + max(s1 - s0, 0)))
            out_shape.append(size)
        out = np.full(out_shape, value, dtype=x.dtype)
        out[tuple(dst)] = x[tuple(src)]
        ctx.args = (x.shape, tuple(src), tuple(dst))
        return out

    @staticmethod
    def backward(ctx, g):
        shape, src, dst = ctx.args
        gx = np.zeros(shape, g.dtype)
        gx[src] = g[dst]
        return gx


def flatten_array(x: np.ndarray, shape: tuple) -> np.ndarray:
    """x reshaped to ``shape`` (a flatten). An (N, C, H, W) input in channels-last memory with
    few pixels per channel is copied plane by plane (``nn._dense.flatten_small_nhwc``)."""
    if x.ndim == 4 and len(shape) == 2 and shape[0] == x.shape[0]:
        from ..nn._dense import flatten_small_nhwc

        out = flatten_small_nhwc(x)
        if out is not None:
            return out
    return x.reshape(shape)


class Flatten(Reshape):
    """Flatten some dimensions into one.  dx = g.reshape(x.shape) (a view, Reshape's backward).

    The gradient stays in NCHW memory. Tried: handing back NHWC memory, the layout of the
    pooling layer below, costs a copy here that its backward did not win back in a training
    step (conv4, batch 64: max-pool backward 1.24 ms either way, +0.18 ms of copy)."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return flatten_array(x, shape)
