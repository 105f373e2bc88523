"""Linear (fully connected) layer, Flatten and Identity."""

from __future__ import annotations

import math

import numpy as np

from . import _gemm, _parallel, _recycle, init
from ._conv_kernels import column_sums
from ._parallel import get_num_threads, parallel_for, parallel_matmul, split
from .module import DEFAULT_DTYPE, Module, Parameter

__all__ = ["Linear", "Flatten", "Identity"]


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a (..., K) ``a`` and a (K, M) ``b``, its rows split over the kernel
    threads (NumPy's OpenBLAS runs single-threaded once the thread pool owns the cores)."""
    if a.ndim < 2:
        return a @ b
    return parallel_matmul(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[-1])


def _two_matmuls(a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray):
    """``(a1 @ b1, a2 @ b2)`` for 2-D operands, the two products computed at the same time on
    the kernel threads (half of the threads each, their output columns split among them).

    Why: Linear's backward needs two GEMMs of the same cost (weight and input gradients).
    One thread per product instead of each product split over both threads packs every
    operand once instead of twice and dispatches to the pool once instead of twice
    (Linear 3136 -> 256, batch 64, 2 threads: CPU time of the two GEMMs 2.1 ms instead of
    2.5 ms). Serial when there is one thread or little work (see ``parallel_for``)."""
    # Threaded only when each product alone is worth a pool dispatch (Linear 512 -> 10 at
    # batch 256: 0.10 ms serial, 0.13 ms on two threads).
    work = min(a1.nbytes + b1.nbytes + a1.shape[0] * b1.shape[1] * a1.itemsize,
               a2.nbytes + b2.nbytes + a2.shape[0] * b2.shape[1] * a2.itemsize)
    threads = get_num_threads()
    if threads == 1 or work < _parallel.MIN_PARALLEL_BYTES:
        # Small layers: no pool, no Python block loop.
        return _gemm.matmul(a1, b1), _gemm.matmul(a2, b2)
    out1 = _recycle.empty((a1.shape[0], b1.shape[1]), dtype=np.result_type(a1, b1))
    out2 = _recycle.empty((a2.shape[0], b2.shape[1]), dtype=np.result_type(a2, b2))
    per = max(1, threads // 2)             # threads (column blocks) per product
    blocks = [(a1, b1, out1, lo, hi) for lo, hi in split(b1.shape[1], per)]
    blocks += [(a2, b2, out2, lo, hi) for lo, hi in split(b2.shape[1], per)]

    def run(start, stop):
        for a, b, out, lo, hi in blocks[start:stop]:
            _gemm.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

    parallel_for(len(blocks), run, work)
    return out1, out2


def _check_float(layer: Module, x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
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

    returns_fresh_output = True       # see Module: a ReLU after it may work in place
    returns_fresh_input_grad = True

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
        self._cache = None

    def reset_parameters(self, generator: np.random.Generator | None = None) -> None:
        """Re-draw weight and bias with PyTorch's default scheme."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _check_float(self, x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self._short_name()}: expected input with last dimension {self.in_features}, "
                f"got shape {x.shape}"
            )
        w = self.weight.data
        x = x.astype(w.dtype, copy=False)
        out = _matmul(x, w.T)
        if self.bias is not None:
            out += self.bias.data
        self._cache = x
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        x = self._need_cache(self._cache)
        w = self.weight.data
        g2 = grad_out.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        want_w = self.weight.requires_grad
        gx = None
        if want_w and self.needs_input_grad:
            gw, gx = _two_matmuls(g2.T, x2, g2, w)
        elif want_w:
            gw = parallel_matmul(g2.T, x2)
        elif self.needs_input_grad:
            gx = parallel_matmul(g2, w)
        if want_w:
            self.weight.accumulate_grad(gw, owned=True)
        if self.bias is not None and self.bias.requires_grad:
            # ones @ g (a GEMV) instead of g.sum(axis=0), which reduces along the strided axis.
            self.bias.accumulate_grad(column_sums(np.ascontiguousarray(g2)), owned=True)
        if gx is None:
            return None
        return gx.reshape(*grad_out.shape[:-1], self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _flatten_small_nhwc(x: np.ndarray) -> np.ndarray | None:
    """(N, C, H, W) whose memory is NHWC (cnnkit's conv / pooling outputs) with at most 4
    pixels per channel -> contiguous (N, C*H*W) in PyTorch's (C, H, W) order; None otherwise.

    Why: ``reshape`` copies such an array with an inner loop over the H*W pixels of a
    channel, which is slow when there are only a few (VGG's 2x2 maps); one strided copy of
    the (N, C) plane per pixel is faster (batch 64, 512 x 2 x 2: 42 us instead of 105 us).
    With more pixels NumPy's own copy is the faster one (7x7: 60 us against 260 us).
    The planes are split over the threads by samples for large batches."""
    n, c, h, w = x.shape
    hw = h * w
    if hw > 4 or x.size == 0 or x.flags.c_contiguous or not x.transpose(0, 2, 3, 1).flags.c_contiguous:
        return None
    src = x.transpose(0, 2, 3, 1).reshape(n, hw, c)      # a view: the memory is NHWC
    out = _recycle.empty((n, c, hw), dtype=x.dtype)

    def run(a, b):
        for i in range(hw):
            out[a:b, :, i] = src[a:b, i, :]

    parallel_for(n, run, out.nbytes)
    return out.reshape(n, c * hw)


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
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        nd = x.ndim
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < max(nd, 1) and 0 <= e < max(nd, 1)) or s > e:
            raise ValueError(
                f"{self._short_name()}: cannot flatten dims {self.start_dim}..{self.end_dim} "
                f"of an input with shape {x.shape}"
            )
        self._cache = x.shape
        if nd == 4 and s == 1 and e == 3:
            out = _flatten_small_nhwc(x)
            if out is not None:
                return out
        if nd == 0:
            return x.reshape(1)
        new_shape = x.shape[:s] + (-1 if x.size else int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
        return x.reshape(new_shape)

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        shape = self._need_cache(self._cache)
        if not self.needs_input_grad:
            return None
        # A view (NCHW memory). Tried: handing back NHWC memory, the layout of the pooling
        # layer below, costs a copy here that its backward did not win back in a training
        # step (conv4, batch 64: max-pool backward 1.24 ms either way, +0.18 ms of copy).
        return grad_out.reshape(shape)

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

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        # The same array is returned: callers must not write into a gradient they receive.
        return grad_out if self.needs_input_grad else None
