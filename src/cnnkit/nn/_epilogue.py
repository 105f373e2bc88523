"""The last step of every convolution kernel on each output chunk: bias, then an optional
fused ReLU; and the last step of an input-gradient chunk: the gradient of the ReLU before the
layer (``mask_by_positive``).

Why fuse: a chunk of output that a GEMM has just written is still in cache, so adding the
bias and clipping it there costs almost nothing, while a separate ReLU layer makes one more
pass over the whole activation in memory (measured on conv4's 28x28 layers at batch 64:
0.3-1.0 ms per ReLU). ``Sequential`` asks for the fusion when a Conv2d is followed by a
ReLU and nothing observes the intermediate (see ``containers.py``); without gradients also
for a ReLU or ReLU6 after an eval-mode BatchNorm2d folded into the convolution.
"""

from __future__ import annotations

import numpy as np

from . import _jit, _jit_epilogue
from ._buffers import workspace


def relu_limits(relu: bool | float) -> tuple[bool, float]:
    """What a ``relu`` argument asks for: (clip below at 0, upper cap or inf). True is a
    ReLU, a number a capped one (6.0: a ReLU6), False nothing."""
    if isinstance(relu, (bool, np.bool_)):    # a flag (np.True_ too), never a cap of 1
        return bool(relu), np.inf
    return bool(relu), float(relu) if relu else np.inf


def finish_output(dst: np.ndarray, bias: np.ndarray | None, relu: bool | float) -> None:
    """In place on an output chunk (..., O): ``dst += bias``, then ``max(dst, 0)`` when
    ``relu`` is True, or ``min(max(dst, 0), relu)`` when it is a number (6.0: a ReLU6)."""
    clip_low, cap = relu_limits(relu)
    if (bias is not None or clip_low) and _jit.enabled() and _compiled_fits(dst, bias):
        no_bias = dst.reshape(-1)[:0]          # a placeholder of the same type (not read)
        _jit_epilogue.bias_clip(dst.reshape(-1, dst.shape[-1]), no_bias if bias is None else bias,
                                bias is not None, clip_low, cap < np.inf, cap)
        return
    if bias is not None:
        _add_per_channel(dst, bias)
    if cap < np.inf:
        np.clip(dst, 0, cap, out=dst)
    elif clip_low:
        np.maximum(dst, 0, out=dst)


def _compiled_fits(dst: np.ndarray, bias: np.ndarray | None) -> bool:
    """Whether ``_jit_epilogue.bias_clip`` can take this chunk: C-contiguous, and a 1-D
    contiguous bias of its dtype (a row-block conv's tiled bias (P*O,) is one too)."""
    return (dst.ndim >= 1 and dst.flags.c_contiguous and dst.dtype.kind == "f"
            and (bias is None or (bias.ndim == 1 and bias.dtype == dst.dtype and bias.flags.c_contiguous
                                  and bias.shape[0] == dst.shape[-1])))


#: Longest tiled channel vector ``_add_per_channel`` builds (elements).
TILE_MAX = 4096


def _add_per_channel(dst: np.ndarray, vec: np.ndarray) -> None:
    """``dst += vec`` over the last (channel) axis. Why not the plain broadcast: NumPy's
    inner loop then runs over C values only (16-96 in a depthwise layer), and its overhead
    costs more than the adds. When k consecutive pixels of C channels are contiguous, the
    add runs over rows of k*C values with ``vec`` tiled k times (k*C <= ``TILE_MAX``):
    k pixels of a C-contiguous chunk, or the W pixels of an image row in a row block."""
    c = dst.shape[-1]
    rows = None
    if vec.ndim == 1 and dst.ndim >= 2 and dst.strides[-1] == dst.itemsize:
        if dst.flags.c_contiguous:
            total = dst.size // c
            k = 1
            while total % (2 * k) == 0 and 2 * k * c <= TILE_MAX:
                k *= 2
            rows = dst.reshape(-1, k * c) if k > 1 else None
        elif dst.strides[-2] == c * dst.itemsize and 1 < dst.shape[-2] * c <= TILE_MAX:
            k = dst.shape[-2]
            rows = dst.view()
            rows.shape = dst.shape[:-2] + (k * c,)   # a view: the last two axes are contiguous
    if rows is None:
        dst += vec
    else:
        rows += np.tile(vec, k)


def mask_by_positive(grad: np.ndarray, ref: np.ndarray) -> None:
    """In place on an input-gradient chunk: ``grad *= (ref > 0)``, where ``ref`` is the same
    chunk of the layer's input. When that input is the output of a ReLU, this is the ReLU's
    backward (its mask: out > 0 exactly where x > 0), applied while the chunk is in cache
    instead of in a separate pass over the whole gradient (see ``Sequential``; measured on a
    9-image chunk of conv4's 28x28x32 gradient: 75 us here, against ~0.9 ms for the ReLU's
    own pass over the batch of 64). Same arithmetic as ``ReLU.backward``: bit for bit."""
    if (_jit.enabled() and grad.flags.c_contiguous and ref.flags.c_contiguous and grad.shape == ref.shape
            and grad.dtype.kind == "f"):
        _jit_epilogue.multiply_by_positive(grad.reshape(-1), ref.reshape(-1))
        return
    keep = workspace.get("relu_grad_mask", grad.shape, np.bool_)
    np.greater(ref, 0, out=keep)
    np.multiply(grad, keep, out=grad)
