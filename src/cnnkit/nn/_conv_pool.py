"""Convolution, ReLU and max pooling in one pass over the batch.

Why: a ``Conv2d -> ReLU -> MaxPool2d`` stack (or ``Conv2d -> MaxPool2d -> ReLU``, LeNet's
order, which computes the same values) otherwise writes the full-size convolution
output to memory, then reads it back in a second parallel region to pool it. Here each
thread runs the convolution kernel on its own images, a batch chunk at a time, and pools
each chunk straight away: one region instead of two, the pool reads data its own thread
has just written, and the full-size output of a chunk is scratch (recycled for the next
chunk) instead of an array that lives until the pool has run. Measured on 2 threads, batch
64, Sequential(Conv2d, ReLU, MaxPool2d(2)) under no_grad, separate / one pass (ms, medians
of 8 interleaved rounds): 1 -> 32 at 28x28 1.53 / 1.39, 32 -> 32 at 28x28 7.01 / 6.79,
64 -> 64 at 14x14 5.24 / 5.14, 3 -> 64 at 32x32 3.61 / 3.50, 64 -> 128 at 16x16 (Winograd)
9.37 / 9.04, 512 -> 512 at 4x4 11.00 / 10.87. Whole networks, batch 64, 2 threads: the
4-conv net 1.02-1.03x in training and inference, the VGG-style net 0.99-1.01x (noise).
LeNet's order at batch 64, whole network, 2 threads (same process, 11 alternating rounds):
inference 1.894 -> 1.841 ms, training 5.554 -> 5.538 ms.
``Sequential`` uses it when nothing observes the intermediate arrays (``nn.fusion``).

Without gradients, ``Conv2d -> ReLU -> AvgPool2d`` runs the same way (``conv_relu_avg_pool``;
seed-000's two blocks). The ReLU does not commute with an average, so it stays in the
convolution's output pass; with gradients the layers run one by one (the backward would
need the full-size ReLU mask this pass never keeps).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._buffers import batch_chunks
from ._epilogue import finish_output
from ._parallel import parallel_for
from . import _recycle
from ._pool_kernels import avg_pool_chunk, max_pool_chunk, max_pool_outputs

#: Convolution output per chunk. Smaller chunks measured slower (the kernel's own GEMMs get
#: shorter: 3 -> 64 at 32x32 3.70 ms with 4 MB, 3.50 with 8 MB, 3.46 with 16 MB); bigger
#: ones hold more full-size output at once for no measured gain.
CHUNK_BYTES = 8 << 20


def conv_relu_max_pool(xt: np.ndarray, conv_kernel: Callable[[np.ndarray], np.ndarray], conv_shape,
                       pool_geo: dict, keep_index: bool, dtype, pooled_bias: np.ndarray | None = None):
    """``relu(max_pool(conv_kernel(xt)) + pooled_bias)``, chunk by chunk: the max pooling of
    a convolution followed by a ReLU (they commute), the ReLU applied to the pooled values.

    Args:
        xt: NHWC input (N, H, W, C).
        conv_kernel: NHWC input chunk -> fresh NHWC output chunk, without ReLU
            (``_conv_kernels.conv_forward_kernel``); it runs serially inside this region.
        conv_shape: (N, O, Ho, Wo), the convolution output's shape.
        pool_geo: ``pool_geometry`` of that shape.
        keep_index: also return the winning taps, with dead windows (no positive maximum)
            marked (``max_pool2d_forward``'s ``relu_input``).
        pooled_bias: (O,) bias added to the pooled values (then not to be added by
            ``conv_kernel``: max(a + b) == max(a) + b), or None.

    Returns:
        ``(out, index)``: NHWC (N, Hp, Wp, O) arrays, fresh; index None unless ``keep_index``.
    """
    n, o, ho, wo = conv_shape
    out, idx = max_pool_outputs(pool_geo, conv_shape, dtype, keep_index)
    per_sample = ho * wo * o * np.dtype(dtype).itemsize

    def run(start, stop):
        for n0, n1 in batch_chunks(start, stop, per_sample, CHUNK_BYTES):
            y = conv_kernel(xt[n0:n1])
            max_pool_chunk(y, pool_geo, out[n0:n1], None if idx is None else idx[n0:n1], relu_input=True)
            finish_output(out[n0:n1], pooled_bias, True)

    parallel_for(n, run, xt.nbytes + n * per_sample)
    return out, idx


def conv_relu_avg_pool(xt: np.ndarray, conv_kernel: Callable[[np.ndarray], np.ndarray], conv_shape,
                       pool_geo: dict, inv, dtype) -> np.ndarray:
    """``avg_pool(conv_kernel(xt))``, chunk by chunk (see the module's docstring): the
    convolution kernel applies the ReLU in its output pass, each chunk is pooled while it
    is in cache. Inference only.

    Args:
        xt: NHWC input (N, H, W, C).
        conv_kernel: NHWC input chunk -> fresh NHWC output chunk, ReLU included
            (``_conv_kernels.conv_forward_kernel`` with ``relu``); it runs serially here.
        conv_shape: (N, O, Ho, Wo), the convolution output's shape.
        pool_geo: ``pool_geometry`` of that shape; inv: ``avg_pool_divisor``.

    Returns:
        out: a fresh NHWC (N, Hp, Wp, O) array.
    """
    n, o, ho, wo = conv_shape
    out = _recycle.empty((n,) + tuple(pool_geo["out_hw"]) + (o,), dtype=dtype)
    per_sample = ho * wo * o * np.dtype(dtype).itemsize

    def run(start, stop):
        for n0, n1 in batch_chunks(start, stop, per_sample, CHUNK_BYTES):
            avg_pool_chunk(conv_kernel(xt[n0:n1]), pool_geo, inv, out[n0:n1])

    parallel_for(n, run, xt.nbytes + n * per_sample)
    return out
