"""Winograd F(2x2, 3x3) convolution: 3x3 kernels, stride 1, no dilation, no groups.

Every 2x2 block of outputs comes from a 4x4 input tile ``d``:
``Y = A^T [(G w G^T) * (B^T d B)] A``, so the 36 multiply-adds per block and channel pair
of im2col + GEMM become 16: the GEMMs shrink 2.25x. That pays where the GEMMs dominate
(many channels, small images); for few channels the transforms cost more than they save,
hence ``use_winograd``.

With the 2-D transforms written as Kronecker products, each is one small GEMM over a tile
matrix: input tiles (16, T*C) -> ``kron(B^T, B^T) @ tiles``; weights (O*C, 9) ->
``kron(G, G)``; outputs (16, T*O) -> ``kron(A^T, A^T)``. The 16 products are one batched
GEMM (16, T, C) @ (16, C, O).

Backward: the input gradient is a 3x3 stride-1 convolution too (flipped, transposed
kernel), so it runs through ``winograd_conv``. The weight gradient is
``G^T [sum over tiles (B^T d B) * (A dY A^T)] G``: again 16 GEMMs, reducing over tiles.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _gemm, _jit, _jit_winograd, _recycle
from ._buffers import workspace
from ._epilogue import finish_output, mask_by_positive, relu_limits
from ._im2col import pad_nhwc
from ._parallel import parallel_for, parallel_matmul, parallel_sum

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
_KB = np.kron(_BT, _BT)   # (16, 16): input tile -> transformed tile
_KG = np.kron(_G, _G)     # (16, 9): kernel -> transformed kernel
_KA = np.kron(_AT, _AT)   # (4, 16): transformed product -> 2x2 outputs

#: The workspace name of the raw input tiles and of the products: the same scratch as
#: im2col's columns (``_conv_kernels``), which no Winograd call needs while it runs, so a
#: thread holds one buffer for both (8 MB less for the VGG-style net at batch 64).
_TILES = "conv_cols"
#: Target bytes of one chunk's transformed input tiles.
CHUNK_BYTES = 4 << 20
#: GEMM rows (tiles) per chunk at least: fewer make the 16 GEMMs inefficient.
MIN_CHUNK_TILES = 256
#: Use Winograd when in_channels * out_channels is at least this (measured crossover:
#: 64 x 128 gains ~5%, 32 x 32 loses ~15%). The same floor holds with the compiled
#: transforms (``_jit_winograd``): the 4-conv net's 64 -> 64 layer at 14x14 gained alone
#: (2 threads, batch 64: 4.49 -> 3.92 ms) but the network lost with it (inference 15.4 ->
#: 16.3 ms, training 47.9 -> 49.9 ms, same process), and with 32 -> 64 too (15.7 -> 16.3 ms).
MIN_CHANNEL_PRODUCT = 64 * 128


def use_winograd(kernel, stride, dilation, groups, c: int, o: int) -> bool:
    """Whether the forward pass (and the input gradient) should use Winograd."""
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and c * o >= MIN_CHANNEL_PRODUCT)


def use_winograd_weight_grad(n: int, out_hw, c: int, o: int) -> bool:
    """The weight gradient reduces over tiles into a (16, C, O) array: it only pays when
    there are many tiles per channel pair (measured: 4x4 images with 512 channels lose)."""
    tiles = n * -(-out_hw[0] // 2) * -(-out_hw[1] // 2)
    return tiles >= 4 * max(c, o)


#: Tile positions (a, b) -> (3 - a, 3 - b) for a, b in {0, 3} (rows 1, 2 stay). Why: G J = P G,
#: where J reverses the 3 kernel taps and P swaps G's first and last rows, so the transform of
#: a flipped kernel is the transform of the kernel with positions permuted:
#: G (J w J) G^T = P (G w G^T) P^T.
_FLIP = np.array([3, 1, 2, 0])
_PERM = (_FLIP[:, None] * 4 + _FLIP[None, :]).reshape(16)
_IDENTITY = np.arange(16)


def _consts(dtype, flipped: bool = False):
    """(input-tile transform, kernel transform, output transform) in ``dtype``.

    ``flipped``: the constants of the convolution with the flipped, in/out-swapped kernel
    (the input gradient), to be used with the *forward's* transformed weight, transposed:
    that product at position p needs U[perm(p)]^T, and permuting the input transform's
    rows and the output transform's columns by the same involution supplies it."""
    if flipped:
        return _KB[_PERM].astype(dtype), _KG.astype(dtype), _KA[:, _PERM].astype(dtype)
    return _KB.astype(dtype), _KG.astype(dtype), _KA.astype(dtype)


def transform_weight(weight: np.ndarray) -> np.ndarray:
    """(O, C, 3, 3) -> (16, C, O) GEMM operand (a transposed view of a (16, O, C) array).

    The same operand serves the input gradient: ``winograd_conv(g, wt, ..., flipped=True)``
    (no flipped copy of the kernel and no second transform)."""
    o, c = weight.shape[:2]
    _, kg, _ = _consts(weight.dtype)
    w16 = parallel_matmul(kg, weight.reshape(o * c, 9).T)      # (16, O*C)
    return w16.reshape(16, o, c).transpose(0, 2, 1)


def _tiles(xp: np.ndarray, th: int, tw: int, size: int, step: int) -> np.ndarray:
    """View (size, size, n, th, tw, C) of the overlapping tiles of an NHWC array."""
    n, _, _, c = xp.shape
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, (size, size, n, th, tw, c), (s1, s2, s0, step * s1, step * s2, s3), writeable=False)


def _input_tiles(x: np.ndarray, pads, th: int, tw: int, name: str, kb: np.ndarray | None = None) -> np.ndarray:
    """Transformed input tiles (16, n*th*tw, C) of an NHWC chunk (workspace memory);
    ``kb``: the input transform (default: the forward one)."""
    n, h, w, c = x.shape
    t, b, l, r = pads
    # Rows / columns up to 2*th + 2 (one more zero row / column when the output is odd).
    extra_h = 2 * th + 2 - (h + t + b)
    extra_w = 2 * tw + 2 - (w + l + r)
    xp = pad_nhwc(x, (t, b + extra_h, l, r + extra_w), "wino_pad")
    if kb is None:
        kb, _, _ = _consts(x.dtype)
    d = workspace.get(_TILES, (16, n * th * tw * c), x.dtype)
    np.copyto(d.reshape(4, 4, n, th, tw, c), _tiles(xp, th, tw, 4, 2))
    v = workspace.get(name, (16, n * th * tw, c), x.dtype)
    _gemm.matmul(kb, d, out=v.reshape(16, -1))
    return v


def winograd_conv(xt: np.ndarray, wt: np.ndarray, pads, out_hw, bias=None, flipped: bool = False,
                  relu: bool = False, relu_mask: np.ndarray | None = None) -> np.ndarray:
    """NHWC input (N, H, W, C), transformed weight (16, C, O) -> NHWC output (N, Ho, Wo, O).

    ``flipped=True``: convolve with the flipped kernel whose in / out channels are swapped
    (the input gradient of the forward convolution that ``wt`` belongs to), given the
    forward's transformed weight ``wt`` (16, O, C) as it is: input (N, H, W, O) -> output
    (N, Ho, Wo, C). ``relu``: a fused ReLU on the output; ``relu_mask``: an array of the
    output's shape, each output chunk is multiplied by ``relu_mask > 0`` (see ``_epilogue``)."""
    if flipped:
        wt = wt.transpose(0, 2, 1)
    n, h, w, c = xt.shape
    o = wt.shape[2]
    ho, wo = out_hw
    th, tw = -(-ho // 2), -(-wo // 2)
    kb, _, ka = _consts(xt.dtype, flipped)
    out = _recycle.empty((n, ho, wo, o), dtype=xt.dtype)
    per_sample = 16 * th * tw * max(c, o) * xt.itemsize
    step = max(1, CHUNK_BYTES // per_sample, -(-MIN_CHUNK_TILES // (th * tw)))

    compiled = _jit.enabled()
    if compiled:
        perm = _PERM if flipped else _IDENTITY
        bias_vec = np.zeros(o, dtype=xt.dtype) if bias is None else bias.astype(xt.dtype, copy=False)
        clip_low, cap = relu_limits(relu)

    def run(start, stop):
        for n0 in range(start, stop, step):
            n1 = min(stop, n0 + step)
            t = (n1 - n0) * th * tw
            dst = out[n0:n1]
            if compiled:
                # Tiles read straight from the input, transforms as adds, bias and ReLU in
                # the output sweep (see _jit_winograd).
                v = workspace.get("wino_v", (16, t, c), xt.dtype)
                _jit_winograd.input_tiles(xt[n0:n1], pads[0], pads[2], th, tw, perm, v)
            else:
                v = _input_tiles(xt[n0:n1], pads, th, tw, "wino_v", kb)
            m = workspace.get(_TILES, (16, t, o), xt.dtype)
            _gemm.matmul(v, wt, out=m)
            if compiled:
                _jit_winograd.output_tiles(m, bias_vec, clip_low, cap, perm, dst, th, tw)
            else:
                # Scratch reuse: the raw tiles are dead once transformed, the transformed tiles
                # once multiplied (memory: the buffers exist per thread).
                y = workspace.get("wino_v", (4, t * o), xt.dtype)
                _gemm.matmul(ka, m.reshape(16, t * o), out=y)
                y6 = y.reshape(2, 2, n1 - n0, th, tw, o)
                if ho == 2 * th and wo == 2 * tw:
                    np.copyto(dst.reshape(n1 - n0, th, 2, tw, 2, o), y6.transpose(2, 3, 0, 4, 1, 5))
                else:
                    for r in range(2):
                        for s in range(2):
                            part = dst[:, r::2, s::2]
                            np.copyto(part, y6[r, s, :, : part.shape[1], : part.shape[2]])
                finish_output(dst, bias, relu)
            if relu_mask is not None:
                mask_by_positive(dst, relu_mask[n0:n1])

    parallel_for(n, run, n * per_sample)
    return out


def winograd_weight_grad(g: np.ndarray, xt: np.ndarray, pads) -> np.ndarray:
    """d loss / d weight (O, C, 3, 3) from NHWC g (N, Ho, Wo, O) and input (N, H, W, C)."""
    n, h, w, c = xt.shape
    _, ho, wo, o = g.shape
    th, tw = -(-ho // 2), -(-wo // 2)
    _, kg, ka = _consts(xt.dtype)
    per_sample = 16 * th * tw * max(c, o) * xt.itemsize
    step = max(1, max(CHUNK_BYTES, 2 * 16 * c * o * xt.itemsize) // per_sample)

    def part(n0, n1):
        t = (n1 - n0) * th * tw
        v = _input_tiles(xt[n0:n1], pads, th, tw, "wino_v")
        # Gradient tiles: 2x2 blocks of dY (zero-padded to even size), transformed.
        gp = pad_nhwc(g[n0:n1], (0, 2 * th - ho, 0, 2 * tw - wo), "wino_gpad")
        gd = workspace.get("wino_gd", (4, t * o), xt.dtype)
        np.copyto(gd.reshape(2, 2, n1 - n0, th, tw, o), _tiles(gp, th, tw, 2, 2))
        gt = workspace.get(_TILES, (16, t, o), xt.dtype)   # the raw tiles are dead
        _gemm.matmul(ka.T, gd, out=gt.reshape(16, t * o))
        return _gemm.matmul(v.transpose(0, 2, 1), gt)             # (16, C, O)

    s = parallel_sum(n, part, per_sample, step * per_sample)
    gw = _gemm.matmul(kg.T, s.reshape(16, c * o))                  # (9, C*O)
    return np.ascontiguousarray(gw.reshape(3, 3, c, o).transpose(3, 2, 0, 1))
