"""The weight gradient of a convolution with a large kernel, its columns shared out to the threads.

    dL/dw[o, c, i, j] = sum over output pixels p of g[p, o] * x_ij[p, c]

where ``x_ij`` is the input seen through tap (i, j): shifted by (i*dh, j*dw) minus the
padding, sampled with the stride (zero where it falls in the padding), one row of C values
per output pixel. Side by side, the x_ij are im2col's columns (i, j, c), and the gradient
is ``g^T (O, P) @ columns (P, kh*kw*C)`` over all P = N*Ho*Wo output pixels.

Why, for large kernels (VGG's 256 -> 512 and 512 -> 512 layers at 4x4 and 2x2): the
general path (``_conv_kernels.gemm_conv_param_grads``) splits the *batch* over the
threads, so every thread builds its own full (O, kh*kw*C) partial gradient (9.4 MB each
for a 512 x 512 3x3 kernel) and the partials are added afterwards. Here each thread takes
a contiguous run of the gradient's *columns* over the whole batch: it copies only its own
columns of each batch chunk and writes its block of the gradient in place (BLAS adds the
chunks, beta = 1). No partials, no reduction pass, no padded copy of the input. Measured
(2 threads, ms, batch split / column split): 512 -> 512 at 4x4 batch 256 79.3 / 68.6,
at 2x2 batch 64 6.4 / 6.3; 512 -> 512 at 4x4 batch 64 18.4 / 19.5 and 256 -> 512 8.7 /
9.2 (the column chunk is then the whole batch, and the copies are of short rows).
"""

from __future__ import annotations

import numpy as np

from . import _gemm
from ._buffers import workspace
from ._im2col import tap_windows
from ._parallel import get_num_threads, parallel_for, split

#: Used for kernels whose float32 gradient is at least this big (see ``use_tap_weight_grad``).
MIN_GRAD_BYTES = 4 << 20
#: Column chunk per thread (a batch chunk of its share of the gradient's columns).
TAP_CHUNK_BYTES = 8 << 20
#: Channel blocks are at least this wide.
MIN_BLOCK_CHANNELS = 64


def use_tap_weight_grad(groups: int, weight_shape) -> bool:
    """Whether ``tap_weight_grad`` should compute this layer's weight gradient: an
    ungrouped kernel of at least ``MIN_GRAD_BYTES`` (VGG's 256 -> 512 and 512 -> 512 3x3
    layers). Smaller kernels keep the batch split, whose per-thread partial gradients are
    then cheap and whose column chunks are longer (measured on 128 -> 256 at 8x8, batch 8:
    1.5 ms against 2.2 ms here)."""
    o, c, kh, kw = weight_shape
    return groups == 1 and o * c * kh * kw * 4 >= MIN_GRAD_BYTES


def tap_weight_grad(g: np.ndarray, xt: np.ndarray, weight_shape, geo: dict) -> np.ndarray:
    """d loss / d weight (O, C, kh, kw) of an ungrouped convolution.

    Args:
        g: the upstream gradient, NHWC (N, Ho, Wo, O), C-contiguous.
        xt: the layer's input, NHWC (N, H, W, C).
        weight_shape: (O, C, kh, kw).
        geo: the forward's geometry (``pads``, ``stride``, ``dilation``, ``out_hw``).

    Returns:
        A fresh C-contiguous float array of ``weight_shape``.
    """
    o, c, kh, kw = weight_shape
    n, h, w, _ = xt.shape
    ho, wo = geo["out_hw"]
    (sh, sw), (dh, dw) = geo["stride"], geo["dilation"]
    t, _, l, _ = geo["pads"]
    row_windows = tap_windows(h, ho, kh, sh, dh, t)
    col_windows = tap_windows(w, wo, kw, sw, dw, l)
    g2d = g.reshape(n * ho * wo, o)
    # Work units: (tap, channel block), in the gradient's column order (i, j, c), so that
    # the units of one thread cover one contiguous run of columns.
    blocks = max(1, min(get_num_threads(), c // MIN_BLOCK_CHANNELS))
    bounds = [c * b // blocks for b in range(blocks + 1)]
    gw_taps = np.empty((o, kh, kw, c), dtype=g.dtype)
    gw_cols = gw_taps.reshape(o, kh * kw * c)

    def run(start, stop):
        k0 = (start // blocks) * c + bounds[start % blocks]
        k1 = ((stop - 1) // blocks) * c + bounds[(stop - 1) % blocks + 1]
        chunks = max(1, -(-n * ho * wo * (k1 - k0) * xt.itemsize // TAP_CHUNK_BYTES))
        for n0, n1 in split(n, chunks):
            cols = workspace.get("conv_cols", (n1 - n0, ho, wo, k1 - k0), xt.dtype)
            for unit in range(start, stop):
                tap, block = divmod(unit, blocks)
                c0, c1 = bounds[block], bounds[block + 1]
                at = tap * c + c0 - k0
                _copy_tap(cols[..., at: at + c1 - c0], xt[n0:n1, :, :, c0:c1],
                          row_windows[tap // kw], col_windows[tap % kw])
            _gemm.matmul(g2d[n0 * ho * wo: n1 * ho * wo].T, cols.reshape(-1, k1 - k0),
                         out=gw_cols[:, k0:k1], accumulate=n0 > 0)

    parallel_for(kh * kw * blocks, run, g.nbytes + xt.nbytes)
    return np.ascontiguousarray(gw_taps.transpose(0, 3, 1, 2))


def _copy_tap(dst: np.ndarray, src: np.ndarray, rows, cols) -> None:
    """dst (nb, Ho, Wo, cc) = the input src (nb, H, W, cc) seen through one tap, given its
    ``tap_windows`` along each axis; zero where the tap reads the padding."""
    if rows is None or cols is None:
        dst[...] = 0
        return
    (out_r, in_r), (out_c, in_c) = rows, cols
    dst[:, :out_r.start] = 0
    dst[:, out_r.stop:] = 0
    dst[:, out_r, :out_c.start] = 0
    dst[:, out_r, out_c.stop:] = 0
    dst[:, out_r, out_c] = src[:, in_r, in_c]
