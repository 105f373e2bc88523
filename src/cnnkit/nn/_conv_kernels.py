"""Convolution forward / backward kernels (NHWC inside, see ``nn._kernels``).

- forward: im2col + one GEMM (a batched GEMM over groups), done in batch chunks so that
  the column matrix stays small (bounded scratch memory, and the GEMM reads columns that
  were just written, still in cache). The chunks are shared out to a thread pool.
  With MKL and vertical stride 1, the copy is of one kernel *row* per input pixel and the
  kh kernel rows are accumulated GEMMs over shifted views (``_row_tap_conv``).
  Special cases: 3x3 stride-1 layers with many channels use Winograd (``_winograd``);
  inputs with <= ``SMALL_C`` channels (first layers) use channels-first columns, whose
  copies move whole image rows instead of 1-3 values.
- weight gradient: the columns are rebuilt from the input kept by forward (keeping them
  for every layer until backward would multiply the training memory) and multiplied by
  the upstream gradient, chunk by chunk. Bias gradient: a GEMV.
- input gradient: when the stride is 1 and the upstream gradient's columns are not much
  bigger than the input's, a convolution of the padded upstream gradient with the
  flipped, transposed kernel (im2col + GEMM again, or Winograd) - faster than col2im's
  kh*kw strided scatter-adds. Otherwise GEMM to columns + col2im.
- depthwise (one input channel per group): a tap loop of multiply-adds on cache-sized
  blocks of output rows, each tap a stride-1 window of a stride phase of the input so that
  NumPy loops over whole image rows; G tiny GEMMs would be dominated by call overhead.
- 1x1 stride-1 convolutions: a plain GEMM on the channels-last input (no im2col copy).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._buffers import batch_chunks, workspace
from ._epilogue import finish_output, mask_by_positive, relu_limits
from ._im2col import col2im, col2im_tap_major, im2col, im2col_rows, tap_pairs, tap_windows
from ._small_channel_conv import small_c_block, small_c_kernel, small_c_weight_grad
from ._parallel import parallel_for
from . import _gemm, _im2col, _jit, _jit_blas, _jit_conv, _jit_input_grad, _jit_row_taps, _jit_weight_grad, _recycle
from . import _tap_weight_grad as taps, _winograd as wino

#: Target size of one chunk's column matrix; at least one sample per chunk.
CHUNK_BYTES = 8 << 20
#: Inputs with at most this many channels use channels-first columns (first layers).
SMALL_C = 4
#: Weight-gradient column chunks grow with the kernel (see gemm_conv_param_grads) up to this.
WGRAD_MAX_CHUNK_BYTES = 16 << 20
#: col2im input gradients with at most this many input channels use tap-major columns
#: (when the compiled col2im below does not run: Numba off).
TAP_MAJOR_MAX_C = 32
#: col2im input gradients with at most this many input channels use one GEMM to the columns
#: and the compiled col2im when Numba runs (see ``gemm_conv_input_grad``).
COMPILED_COL2IM_MAX_C = 32
#: ... in chunks of columns of about this many bytes: the sweep goes image by image, so
#: bigger chunks only hold more scratch per thread (LeNet at batch 256 kept 2 x 8 MB of
#: columns for its 10-channel input gradient; at batch 64 a thread's share is one chunk either way).
COMPILED_COL2IM_CHUNK_BYTES = 2 << 20
#: Input gradient by transposed convolution when its columns are at most this many
#: times col2im's (H*W*O vs Ho*Wo*C); col2im's strided adds cost more than a copy.
GX_TRANSPOSED_FACTOR = 4


def _chunks(start: int, stop: int, bytes_per_sample: int, target: int | None = None):
    return batch_chunks(start, stop, bytes_per_sample, target or CHUNK_BYTES)


_ones_cache: dict = {}


def column_sums(g2d: np.ndarray) -> np.ndarray:
    """Sum over the rows of a C-contiguous (M, O) matrix, as ones(M) @ g: BLAS's GEMV is
    ~5x faster than ``g.sum(axis=0)``, which reduces along the strided axis."""
    m = g2d.shape[0]
    ones = _ones_cache.get(g2d.dtype.str)
    if ones is None or ones.size < m:
        ones = np.ones(max(m, 1024), dtype=g2d.dtype)
        _ones_cache[g2d.dtype.str] = ones
    return ones[:m] @ g2d


#: Narrow GEMMs (at most this many output columns) are run as a stack of small ones.
NARROW_N = 32
#: ... and at least this deep: in a convolution (its columns hot in cache) the stack lost
#: 5-9 % at K = 288, N = 32, won 10-12 % at K = 576, N = 32, and was within noise at
#: K = 576, N = 64 (measured, 1 and 2 threads).
NARROW_MIN_K = 512
#: ... each of at most this many multiply-adds (rows * K * N), OpenBLAS's small-matrix size.
SMALL_GEMM_MACS = 1 << 20


def narrow_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ b`` for a tall (M, K) ``a`` and a narrow (K, N) ``b``.

    Why: with few output columns (32-channel convolutions) OpenBLAS's blocked GEMM
    packs ``a`` for little work per element and runs at ~50 % of its peak. Cut into row
    blocks small enough for its unpacked small-matrix kernel (one batched call, no Python
    loop), the same product can run faster: the input gradient of conv4's 32 -> 64 layer
    (K = 576, N = 32) went 6.7 -> 5.9 ms on one core, 3.7 -> 3.3 ms on two. Wider or
    shallower products keep the single call, which is as fast or faster for them.

    MKL (``_gemm``) runs narrow products well in one call: the stack measured the same
    there (conv4's (2744, 576) @ (576, 32): 0.75 ms either way, against 0.88 ms stacked
    on OpenBLAS), so with MKL the product is one call."""
    m, k = a.shape
    n = b.shape[1]
    rows = (SMALL_GEMM_MACS // max(k * n, 1)) // 16 * 16
    if (n > NARROW_N or k < NARROW_MIN_K or rows < 16 or m < 2 * rows or _gemm.mkl_active()
            or not (a.flags.c_contiguous and out.flags.c_contiguous)):
        return _gemm.matmul(a, b, out=out)
    full = m - m % rows
    b = np.ascontiguousarray(b)  # the small kernel is slow on a transposed b (measured 1.3x)
    np.matmul(a[:full].reshape(-1, rows, k), b, out=out[:full].reshape(-1, rows, n))
    if full < m:
        np.matmul(a[full:], b, out=out[full:])
    return out


def weight_matrix(weight: np.ndarray, groups: int) -> np.ndarray:
    """(O, Cg, kh, kw) -> (G, kh*kw*Cg, Og) GEMM operand, rows ordered like the im2col columns.

    Returned as the transposed view of a contiguous (G, Og, K) copy: that copy moves runs
    of Cg values and costs ~1 ms for a 512x512x3x3 kernel, where a contiguous (G, K, Og)
    copy gathers with a large stride and costs ~10 ms; BLAS takes either at the same speed.
    """
    o, cg, kh, kw = weight.shape
    rows = np.ascontiguousarray(weight.reshape(groups, o // groups, cg, kh, kw).transpose(0, 1, 3, 4, 2))
    return rows.reshape(groups, o // groups, kh * kw * cg).transpose(0, 2, 1)


def conv_forward_kernel(c: int, weight: np.ndarray, groups: int, geo: dict, bias: np.ndarray | None = None,
                        relu: bool = False, xt: np.ndarray | None = None):
    """The forward kernel for a convolution of C input channels, its weight prepared once:
    a function NHWC input (N, H, W, C) -> NHWC output (N, Ho, Wo, O), a fresh array, that
    can be called on the whole batch or on batch chunks (``_conv_pool``). ``relu``: the
    output is clipped at 0 chunk by chunk (a fused ReLU, see ``_epilogue``). ``xt``: the
    input it will run on (or on chunks of), when known: operands that depend on its layout
    are then prepared here, once, rather than by the first call in each thread."""
    o = weight.shape[0]
    if groups > 1 and weight.shape[1] == 1:
        return lambda xt: depthwise_forward(xt, weight, geo, bias, relu)
    if wino.use_winograd(geo["kernel"], geo["stride"], geo["dilation"], groups, c, o):
        wt = wino.transform_weight(weight)
        # Kept for the input gradient, which needs the same transform (see winograd_conv).
        geo["winograd_weight"] = wt
        return lambda xt: wino.winograd_conv(xt, wt, geo["pads"], geo["out_hw"], bias, relu=relu)
    if groups == 1 and (block := small_c_block(c, o, geo["out_hw"][1], SMALL_C)):
        return small_c_kernel(weight, geo, bias, block, relu, xt)
    wk = None

    def gemm(xt):
        if (groups == 1 and geo["kernel"] == (1, 1) and geo["stride"] == (1, 1) and not any(geo["pads"])
                and xt.flags.c_contiguous):
            return _pointwise_conv(xt, weight, bias, relu)
        nonlocal wk
        if wk is None:
            wk = weight_matrix(weight, groups)
        return _gemm_conv(xt, wk, weight.shape, groups, geo, bias, relu)

    return gemm


def _pointwise_conv(xt: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                    relu: bool = False) -> np.ndarray:
    """1x1 stride-1 unpadded convolution of a C-contiguous NHWC input: a plain GEMM
    (N*H*W, C) @ (C, O) on the input itself. im2col would only copy the input. The rows
    are split over the threads, so batch 1 uses them too."""
    n, h, w, c = xt.shape
    o = weight.shape[0]
    x2d = xt.reshape(n * h * w, c)
    wmat = weight.reshape(o, c).T                                         # (C, O) view
    out = _recycle.empty((n, h, w, o), dtype=xt.dtype)
    out2d = out.reshape(n * h * w, o)

    def run(start, stop):
        dst = out2d[start:stop]
        _gemm.matmul(x2d[start:stop], wmat, out=dst)
        finish_output(dst, bias, relu)

    parallel_for(x2d.shape[0], run, x2d.nbytes + out2d.nbytes)
    return out


def _gemm_conv(xt, wk, wshape, groups, geo, bias=None, relu: bool = False,
               relu_mask: np.ndarray | None = None) -> np.ndarray:
    """im2col + GEMM with a prepared (G, K, Og) weight matrix ``wk`` of a (O, Cg, kh, kw) kernel.
    ``relu_mask``: an array of the output's shape; each output chunk is multiplied by
    ``relu_mask > 0`` (``mask_by_positive``; an input gradient's folded ReLU backward)."""
    n = xt.shape[0]
    o, cg, kh, kw = wshape
    ho, wo = geo["out_hw"]
    og, k = o // groups, kh * kw * cg
    out = _recycle.empty((n, ho, wo, o), dtype=xt.dtype)
    per_sample = groups * ho * wo * k * xt.itemsize
    row_taps = use_row_taps(wshape, groups, geo)

    def run(start, stop):
        if row_taps and _gemm.mkl_active():
            return _row_tap_conv(xt, wk[0], wshape, geo, out, start, stop, bias, relu, relu_mask)
        for n0, n1 in _chunks(start, stop, per_sample):
            m = (n1 - n0) * ho * wo
            cols = workspace.get("conv_cols", (groups, n1 - n0, ho, wo, kh, kw, cg), xt.dtype)
            im2col(xt[n0:n1], (kh, kw), geo["stride"], geo["dilation"], geo["pads"], (ho, wo), groups, out=cols)
            dst = out[n0:n1].reshape(m, o)
            if groups == 1:
                narrow_matmul(cols.reshape(m, k), wk[0], dst)
            else:
                groups_out = dst.reshape(m, groups, og).transpose(1, 0, 2)           # (G, M, Og) view
                _gemm.matmul(cols.reshape(groups, m, k), wk, out=groups_out)
            finish_output(dst, bias, relu)
            if relu_mask is not None:
                mask_by_positive(out[n0:n1], relu_mask[n0:n1])

    parallel_for(n, run, n * per_sample)
    return out


#: Row-tap convolutions (``_row_tap_conv``) and input gradients (``_row_tap_input_grad``)
#: are used when this is True and MKL runs the GEMMs. Whole networks, batch 64, 2 threads,
#: same process, off / on (ms per step): 4-conv inference 18.25 / 17.71 and training
#: 56.2 / 54.2 (both); LeNet training 5.45 / 5.35 and seed-000 training 11.21 / 10.44
#: (their 5x5 input gradients).
ROW_TAPS = True
#: ... the forward (and transposed-convolution input gradient) only when each image has
#: at least this many output pixels: seed-000's 9x9 forward lost (short per-image GEMMs).
#: The col2im replacement (``_row_tap_input_grad``) won at 8x8 and has no such limit.
ROW_TAPS_MIN_PIXELS = 128


#: Row-tap convolutions of at least this many input channels run as one compiled call per
#: thread (``_jit_row_taps``) when Numba and MKL run; fewer channels keep the Python steps,
#: whose NumPy column copy is the faster one there (``_im2col.COMPILED_MIN_CHANNELS``).
COMPILED_ROW_TAPS_MIN_C = 32
#: ... with row columns of about this many bytes per chunk (at least one image): small
#: enough to stay in a core's L2 cache between the copy and the products. Without Python
#: between the steps a chunk costs nothing extra, and with two threads streaming from the
#: shared cache and memory at once the big chunks lost: 4-conv inference, batch 64, 2
#: threads, 8 MB 12.7-13.0 ms, 2 MB 12.4 ms, 0.25-1 MB 11.9-12.0 ms.
COMPILED_ROW_TAPS_CHUNK_BYTES = 1 << 20
#: Column bytes per chunk of the compiled weight gradient (``_jit_weight_grad``; the
#: Python path's ``CHUNK_BYTES``), for the same reason as ``COMPILED_ROW_TAPS_CHUNK_BYTES``:
#: 4-conv training, batch 64, 2 threads, 8 MB 41.2 ms, 2 MB 39.3 ms, 0.5-1 MB 37.8 ms.
COMPILED_WGRAD_CHUNK_BYTES = 1 << 20


def use_row_taps(wshape, groups: int, geo: dict) -> bool:
    """Whether ``_gemm_conv`` may use ``_row_tap_conv`` (when MKL is active at call time)."""
    kh = wshape[2]
    ho, wo = geo["out_hw"]
    return ROW_TAPS and groups == 1 and kh > 1 and geo["stride"][0] == 1 and ho * wo >= ROW_TAPS_MIN_PIXELS


def _kernel_row_view(rows: np.ndarray, i: int, dh: int, ho: int, writeable: bool = False) -> np.ndarray:
    """Kernel row i's (nb, Ho*Wo, kw*C) columns inside row columns ``rows``
    (nb, Hp, Wo, kw, C): the rows shifted down by i*dh image rows, a strided view."""
    nb, hp, wo, kw, c = rows.shape
    kr, isz = kw * c, rows.itemsize
    return as_strided(rows.reshape(-1)[i * dh * wo * kr:], (nb, ho * wo, kr), (hp * wo * kr * isz, kr * isz, isz),
                      writeable=writeable)


def _row_tap_conv(xt, wk2, wshape, geo, out, start, stop, bias, relu, relu_mask) -> None:
    """Images [start, stop) of a vertical-stride-1 convolution as kh accumulated GEMMs.

    Why: im2col copies kh*kw*C values per output pixel, and that copy cost 35-45 % of the
    GEMM's time in the 4-conv net. ``im2col_rows`` copies kw*C per padded input row pixel
    instead; kernel row i's columns are then the row columns shifted down by i*dh rows, a
    strided view. Each image's Ho*Wo outputs are one GEMM per kernel row (K = kw*C), and
    MKL adds kernel rows 1..kh-1 into the output in place (beta = 1), one batched call per
    row over the chunk's images. One thread, batch 32, ms (im2col + GEMM / this):
    32 -> 32 at 28x28 5.37 / 4.09, 32 -> 64 at 14x14 2.05 / 1.93, 64 -> 64 at 14x14
    4.09 / 3.80, 64 -> 128 at 16x16 9.14 / 8.09.

    ``wk2``: the (kh*kw*C, O) weight matrix, rows ordered (i, j, c); the rest as ``_gemm_conv``.
    """
    o, c, kh, kw = wshape
    ho, wo = geo["out_hw"]
    (_, sw), (dh, dw) = geo["stride"], geo["dilation"]
    hp = ho + (kh - 1) * dh                      # padded input rows (vertical stride 1)
    kr = kw * c                                  # K of one kernel row's product
    per_sample = hp * wo * kr * xt.itemsize
    if c >= COMPILED_ROW_TAPS_MIN_C and _jit_row_taps.usable(xt, out, relu_mask):
        # The whole share in one compiled call (no GIL hand-overs between the steps).
        chunk = max(1, COMPILED_ROW_TAPS_CHUNK_BYTES // per_sample)
        rows = workspace.get("conv_cols", (min(chunk, stop - start), hp, wo, kw, c), xt.dtype)
        w_t = np.ascontiguousarray(wk2.T)           # a view when wk2 is weight_matrix's
        _jit_row_taps.conv(xt, w_t, kh, dh, geo["pads"], sw, dw, rows, out, start, stop, chunk, bias,
                           relu_limits(relu), relu_mask)
        return
    for n0, n1 in _chunks(start, stop, per_sample):
        nb = n1 - n0
        rows = workspace.get("conv_cols", (nb, hp, wo, kw, c), xt.dtype)
        im2col_rows(xt[n0:n1], kw, sw, dw, geo["pads"], wo, out=rows)
        dst3 = out[n0:n1].reshape(nb, ho * wo, o)
        for i in range(kh):
            _gemm.matmul(_kernel_row_view(rows, i, dh, ho), wk2[i * kr:(i + 1) * kr], out=dst3, accumulate=i > 0)
        finish_output(dst3, bias, relu)
        if relu_mask is not None:
            mask_by_positive(out[n0:n1], relu_mask[n0:n1])


def _row_tap_input_grad(g, wrows, geo, gx, start, stop, relu_mask=None) -> None:
    """Images [start, stop) of the input gradient of a vertical-stride-1 convolution,
    through row columns (the adjoint of ``_row_tap_conv``), into ``gx`` (N, H, W, C).

    Why: col2im adds kh*kw shifted blocks into the gradient (25 NumPy calls for LeNet's
    5x5 layer, each a pass over the block). Here the GEMM itself does the vertical part:
    kernel row i's product g @ W_i (Ho*Wo x kw*C per image) is added by MKL (beta = 1)
    into the row columns R (Hp x Wo x kw x C per image) shifted down by i*dh rows, a
    strided view. Then kw adds move R's horizontal taps into the image (kw passes instead
    of kh*kw). LeNet's 10 -> 20 5x5 layer, batch 64, one thread: 1.29 -> 1.12 ms.

    ``wrows``: (kh, O, kw*C), row i holding weight[:, :, i, :] with columns (j, c)."""
    n, h, w, c = gx.shape
    kh, o, kr = wrows.shape
    kw = kr // c
    ho, wo = geo["out_hw"]
    (_, sw), (dh, dw) = geo["stride"], geo["dilation"]
    t, _, l, _ = geo["pads"]
    hp = ho + (kh - 1) * dh                      # padded input rows
    r0, r1 = max(0, t), min(hp, t + h)           # padded rows that are input rows
    windows = tap_windows(w, wo, kw, sw, dw, l)
    for n0, n1 in _chunks(start, stop, hp * wo * kr * g.itemsize):
        nb = n1 - n0
        rows = workspace.get("conv_cols", (nb, hp, wo, kw, c), g.dtype)
        # Every product adds (even the first: kernel row 0 leaves the last (kh-1)*dh rows
        # of each image unwritten, and small sums stay on MKL, see _gemm.matmul).
        rows.fill(0)
        g3 = g[n0:n1].reshape(nb, ho * wo, o)
        for i in range(kh):
            _gemm.matmul(g3, wrows[i], out=_kernel_row_view(rows, i, dh, ho, writeable=True), accumulate=True)
        dst = gx[n0:n1]
        if _jit.enabled() and dst.flags.c_contiguous:
            _jit_conv.add_row_taps(rows, dst, t, l, sw, dw)      # the same adds, one sweep
        else:
            dst.fill(0)
            for j, win in enumerate(windows):
                if win is not None and r1 > r0:
                    out_cols, in_cols = win
                    dst[:, r0 - t: r1 - t, in_cols] += rows[:, r0:r1, out_cols, j]
        if relu_mask is not None:
            mask_by_positive(dst, relu_mask[n0:n1])


def gemm_conv_param_grads(g: np.ndarray, xt: np.ndarray, weight_shape, groups: int, geo: dict,
                          need_weight_grad: bool = True, need_bias_grad: bool = True):
    """(d loss / d weight (O, Cg, kh, kw), d loss / d bias (O,)) from the NHWC upstream
    gradient g (N, Ho, Wo, O); each None when not needed."""
    n = xt.shape[0]
    o, cg, kh, kw = weight_shape
    ho, wo = geo["out_hw"]
    og, k = o // groups, kh * kw * cg
    if need_weight_grad and wino.use_winograd(geo["kernel"], geo["stride"], geo["dilation"], groups, cg, o) \
            and wino.use_winograd_weight_grad(n, (ho, wo), cg, o):
        gw = wino.winograd_weight_grad(g, xt, geo["pads"])
        gb = column_sums(g.reshape(-1, o)) if need_bias_grad else None
        return gw, gb
    if need_weight_grad and taps.use_tap_weight_grad(groups, weight_shape):
        gw = taps.tap_weight_grad(g, xt, weight_shape, geo)
        gb = column_sums(g.reshape(-1, o)) if need_bias_grad else None
        return gw, gb
    if need_weight_grad and groups == 1 and (block := small_c_block(cg, o, wo, SMALL_C)):
        if need_bias_grad:
            return small_c_weight_grad(g, xt, weight_shape, geo, block, bias_grad=True)
        return small_c_weight_grad(g, xt, weight_shape, geo, block), None
    per_sample = groups * ho * wo * k * xt.itemsize
    # Every chunk adds a full (O, K) product into the gradient: for big kernels, bigger
    # chunks, up to a cap on the (per-thread) scratch.
    target = min(max(CHUNK_BYTES, 4 * o * k * xt.itemsize), WGRAD_MAX_CHUNK_BYTES)
    compiled_target = min(max(COMPILED_WGRAD_CHUNK_BYTES, 4 * o * k * xt.itemsize), WGRAD_MAX_CHUNK_BYTES)

    compiled = (groups == 1 and cg >= _im2col.COMPILED_MIN_CHANNELS and need_weight_grad
                and _jit_weight_grad.usable(g, xt))

    def run(start, stop):
        gwk = gb = None
        if need_bias_grad:
            gb = column_sums(g[start:stop].reshape(-1, o))
        if not need_weight_grad:
            return gwk, gb
        if compiled and _jit_blas.available():
            # The thread's whole share in one compiled call (no GIL hand-overs); the same
            # arithmetic as the loop below (the same bits for the same chunks).
            chunk = max(1, compiled_target // max(per_sample, 1))
            return _jit_weight_grad.weight_grad(g, xt, weight_shape, geo, start, stop, chunk)[None], gb
        for n0, n1 in _chunks(start, stop, per_sample, target):
            m = (n1 - n0) * ho * wo
            cols = workspace.get("conv_cols", (groups, n1 - n0, ho, wo, kh, kw, cg), xt.dtype)
            im2col(xt[n0:n1], (kh, kw), geo["stride"], geo["dilation"], geo["pads"], (ho, wo), groups, out=cols)
            g3 = g[n0:n1].reshape(m, groups, og).transpose(1, 2, 0)          # (G, Og, M) view
            part = _gemm.matmul(g3, cols.reshape(groups, m, k))               # (G, Og, K)
            if gwk is None:
                gwk = part
            else:
                gwk += part
        return gwk, gb

    parts = parallel_for(n, run, n * per_sample if need_weight_grad else g.nbytes)
    gw = gb = None
    if need_weight_grad:
        gwk = parts[0][0]
        for p in parts[1:]:
            gwk += p[0]
        gw = np.ascontiguousarray(gwk.reshape(groups, og, kh, kw, cg).transpose(0, 1, 4, 2, 3).reshape(o, cg, kh, kw))
    if need_bias_grad:
        gb = parts[0][1]
        for p in parts[1:]:
            gb += p[1]
    return gw, gb


def gemm_conv_input_grad(g: np.ndarray, weight: np.ndarray, groups: int, geo: dict, in_shape,
                         relu_mask: np.ndarray | None = None) -> np.ndarray:
    """d loss / d input, NHWC (N, H, W, C), from the NHWC upstream gradient (N, Ho, Wo, O).

    ``relu_mask``: the layer's NHWC input when it is a ReLU's output; the gradient is then
    multiplied by ``relu_mask > 0`` chunk by chunk, while each chunk is in cache (the ReLU's
    backward folded into this one, see ``Sequential``)."""
    n, h, w, c = in_shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    (sh, sw), (dh, dw) = geo["stride"], geo["dilation"]
    t, b, l, r = geo["pads"]
    ho, wo = geo["out_hw"]
    # Columns of the transposed conv: H*W rows of kh*kw*O; of col2im: Ho*Wo rows of kh*kw*C.
    # The strided adds of col2im cost ~3x a copy, hence the factor.
    if sh == 1 and sw == 1 and h * w * o <= GX_TRANSPOSED_FACTOR * ho * wo * c:
        # Transposed convolution as a plain one: pad g by the kernel's reach minus the
        # forward padding (negative = crop) and correlate with the flipped kernel, whose
        # in / out channels are swapped within each group.
        pads = ((kh - 1) * dh - t, (kh - 1) * dh - b, (kw - 1) * dw - l, (kw - 1) * dw - r)
        if wino.use_winograd((kh, kw), (1, 1), (dh, dw), groups, o, c):
            # The forward's transformed weight serves the flipped, transposed kernel too.
            wt = geo.get("winograd_weight")
            if wt is None or wt.shape != (16, c, o):
                wt = wino.transform_weight(weight)
            return wino.winograd_conv(g, wt, pads, (h, w), flipped=True, relu_mask=relu_mask)
        # Its (G, kh*kw*Og, Cg) matrix: rows (i, j, og) = weight[og, :, kh-1-i, kw-1-j].
        wmat = np.ascontiguousarray(
            weight.reshape(groups, og, cg, kh, kw).transpose(0, 3, 4, 1, 2)[:, ::-1, ::-1]
        ).reshape(groups, kh * kw * og, cg)
        tgeo = dict(kernel=(kh, kw), stride=(1, 1), dilation=(dh, dw), pads=pads, out_hw=(h, w))
        return _gemm_conv(g, wmat, (c, og, kh, kw), groups, tgeo, relu_mask=relu_mask)
    k = kh * kw * cg
    gx = _recycle.empty((n, h, w, c), dtype=g.dtype)
    per_sample = groups * ho * wo * k * g.itemsize
    # Few input channels with the compiled col2im (``_jit_conv.add_taps``): one GEMM to the
    # columns, then one sweep per image; faster than both the row taps and the tap-major
    # columns below (LeNet's 10-channel input gradient, 2 threads: batch 8 0.16 -> 0.11 ms,
    # batch 64 0.68 -> 0.59 ms; seed-000's 20 channels, batch 64: 1.49 -> 1.38 ms).
    compiled_col2im = groups == 1 and c <= COMPILED_COL2IM_MAX_C and _jit.enabled()
    if ROW_TAPS and groups == 1 and sh == 1 and kh > 1 and not compiled_col2im:
        wrows = None

        def run_rows(start, stop):
            nonlocal wrows
            if not _gemm.mkl_active():
                return False
            if wrows is None:           # (a race between threads only builds it twice)
                wrows = np.ascontiguousarray(weight.transpose(2, 0, 3, 1)).reshape(kh, o, kw * c)
            _row_tap_input_grad(g, wrows, geo, gx, start, stop, relu_mask)
            return True

        done = parallel_for(n, run_rows, n * per_sample)
        if all(done):
            return gx
    if groups == 1 and c <= TAP_MAJOR_MAX_C and not compiled_col2im:
        # Few input channels: columns in tap-major order, a batched GEMM per tap.
        wt = np.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(kh * kw, o, c)   # (taps, O, C)

        def run_taps(start, stop):
            for n0, n1 in _chunks(start, stop, per_sample):
                m = (n1 - n0) * ho * wo
                tcols = workspace.get("conv_cols", (kh, kw, n1 - n0, ho, wo, c), g.dtype)
                # np.matmul, not _gemm: this product writes kh*kw times more than it
                # reads and MKL ran it no faster (seed-000, lenet: 0.98-1.02x).
                np.matmul(g[n0:n1].reshape(1, m, o), wt, out=tcols.reshape(kh * kw, m, c))
                col2im_tap_major(tcols, (h, w), geo["stride"], geo["dilation"], geo["pads"], out=gx[n0:n1])
                if relu_mask is not None:
                    mask_by_positive(gx[n0:n1], relu_mask[n0:n1])

        parallel_for(n, run_taps, n * per_sample)
        return gx
    wk = weight_matrix(weight, groups).transpose(0, 2, 1)                # (G, Og, K)

    target = COMPILED_COL2IM_CHUNK_BYTES if compiled_col2im else None
    one_call = compiled_col2im and _jit_input_grad.usable(g, gx, relu_mask)

    def run(start, stop):
        if one_call and _jit_blas.available():
            # The product, col2im and mask of a thread's share in one compiled call.
            chunk = max(1, target // per_sample)
            cols = workspace.get("conv_cols", (min(chunk, stop - start), ho, wo, kh, kw, cg), g.dtype)
            _jit_input_grad.input_grad(g, wk[0], geo, gx, relu_mask, start, stop, chunk, cols)
            return
        for n0, n1 in _chunks(start, stop, per_sample, target):
            m = (n1 - n0) * ho * wo
            gcols = workspace.get("conv_cols", (groups, n1 - n0, ho, wo, kh, kw, cg), g.dtype)
            g3 = g[n0:n1].reshape(m, groups, og).transpose(1, 0, 2)           # (G, M, Og) view
            _gemm.matmul(g3, wk, out=gcols.reshape(groups, m, k))
            col2im(gcols, (h, w), geo["stride"], geo["dilation"], geo["pads"], out=gx[n0:n1])
            if relu_mask is not None:
                mask_by_positive(gx[n0:n1], relu_mask[n0:n1])

    parallel_for(n, run, n * per_sample)
    return gx


# ---------------------------------------------------------------------------------- depthwise
def _depthwise_taps(geo, h, w):
    return tap_pairs((h, w), geo["out_hw"], geo["kernel"], geo["stride"], geo["dilation"], geo["pads"])


#: Depthwise kernels work on batch chunks of about this many output bytes (cache-sized).
DEPTHWISE_CHUNK_BYTES = 256 << 10
#: The depthwise forward (one output channel per input channel) splits its rows over the
#: threads (False: it runs on the calling thread). Why not: it is kh*kw short NumPy calls
#: per cache-sized block, and on two threads those calls wait for each other's GIL
#: hand-overs (each a core wake-up here). Measured on EfficientNet-Lite0's 16 depthwise
#: layers, every one was slower on 2 threads than on 1 (batch 8: 240 channels at 28x28
#: 16.2 -> 21.0 ms, 32 at 112x112 16.0 -> 18.8 ms; batch 1: 672 at 14x14 1.22 -> 2.15 ms);
#: the whole network, 2 threads, one process: batch 1 43.2 -> 34.1 ms, batch 8 215 -> 208 ms
#: with this False. The backward's einsum calls are longer and do scale (batch 8, 32
#: channels at 112x112: 41.2 ms on 1 thread, 22.7 on 2), so it stays parallel.
DEPTHWISE_FORWARD_PARALLEL = False


def depthwise_forward(xt: np.ndarray, weight: np.ndarray, geo: dict, bias: np.ndarray | None = None,
                      relu: bool = False) -> np.ndarray:
    """Depthwise convolution (groups == C): per tap, out += x_tap * w_tap.

    One output channel per input channel (the usual case) goes to ``_depthwise_rows``;
    channel multipliers > 1 to the tap loop on batch chunks below."""
    if weight.shape[0] == xt.shape[3]:
        return _depthwise_rows(xt, weight, geo, bias, relu)
    return _depthwise_multiplier(xt, weight, geo, bias, relu)


def _depthwise_taps_rows(xt: np.ndarray, geo: dict) -> list:
    """Kernel taps as stride-1 windows: ``(plane, dr, dc, (o0, o1), (w0, w1), tap)`` meaning
    ``out[:, r, w] += plane[:, r + dr, w + dc] * weight_tap`` for rows r in [o0, o1) and
    columns w in [w0, w1) (the outputs whose tap reads a pixel inside the image).

    ``plane`` is a C-contiguous stride phase of the input, ``xt[:, a::sh, b::sw]``: output
    row r, tap i reads input row r*sh + i*dh - top, which is row r + dr of phase
    a = (i*dh - top) mod sh. So every window has contiguous image rows (Wo*C values) even
    for stride 2, and padding is never materialised. For stride 1 the plane is the input."""
    n, h, w, c = xt.shape
    (kh, kw), (sh, sw), (dh, dw) = geo["kernel"], geo["stride"], geo["dilation"]
    ho, wo = geo["out_hw"]
    t, _, l, _ = geo["pads"]
    planes = {}

    def plane(a, b):
        if (a, b) not in planes:
            src = xt[:, a::sh, b::sw]
            if src.flags.c_contiguous:
                planes[(a, b)] = src
            else:
                buf = workspace.get(f"dw_phase_{a}_{b}", src.shape, xt.dtype)
                np.copyto(buf, src)
                planes[(a, b)] = buf
        return planes[(a, b)]

    taps = []
    for i in range(kh):
        a = (i * dh - t) % sh
        dr = (i * dh - t - a) // sh
        o0, o1 = max(0, -dr), min(ho, -(-(h - a) // sh) - dr)
        if o1 <= o0:
            continue
        for j in range(kw):
            b = (j * dw - l) % sw
            dc = (j * dw - l - b) // sw
            w0, w1 = max(0, -dc), min(wo, -(-(w - b) // sw) - dc)
            if w1 > w0:
                taps.append((plane(a, b), dr, dc, (o0, o1), (w0, w1), i * kw + j))
    # A tap covering the whole output first: it initialises the sum without a zero fill.
    taps.sort(key=lambda tp: tp[3] != (0, ho) or tp[4] != (0, wo))
    return taps


def _depthwise_rows(xt: np.ndarray, weight: np.ndarray, geo: dict, bias: np.ndarray | None = None,
                    relu: bool = False) -> np.ndarray:
    """Depthwise convolution with one output channel per input channel, any stride / padding.

    Why this shape of loop: a per-channel weight broadcast over (N, Ho, Wo, C) limits NumPy's
    inner loop to C values, and the loop overhead then costs as much as the arithmetic.
    Here every tap reads a stride-1 window of a stride phase (``_depthwise_taps_rows``), so
    an output row is Wo*C contiguous values, and the tap's weight is tiled to a (Wo*C,)
    row: each multiply / add runs over whole image rows. Work is split over blocks of
    output rows (all images at once), so batch 1 is shared by the threads too, and each
    block's running sum and temporary stay in cache."""
    n, h, w, c = xt.shape
    _, _, kh, kw = weight.shape
    ho, wo = geo["out_hw"]
    taps = _depthwise_taps_rows(xt, geo)
    # (taps, Wo*C): row (i*kw + j) is weight[:, 0, i, j] repeated Wo times.
    wrow = np.ascontiguousarray(
        np.broadcast_to(weight.reshape(c, kh * kw).T[:, None, :], (kh * kw, wo, c))).reshape(kh * kw, wo * c)
    out = _recycle.empty((n, ho, wo, c), dtype=xt.dtype)
    full = bool(taps) and taps[0][3] == (0, ho) and taps[0][4] == (0, wo)
    row_bytes = n * wo * c * xt.itemsize
    step = max(1, DEPTHWISE_CHUNK_BYTES // row_bytes)

    def run(start, stop):
        for r0 in range(start, stop, step):
            r1 = min(stop, r0 + step)
            if not full:
                out[:, r0:r1].fill(0)
            for k, (p, dr, dc, (o0, o1), (w0, w1), tap) in enumerate(taps):
                a, b = max(o0, r0), min(o1, r1)
                if a >= b:
                    continue
                shape = (n, b - a, (w1 - w0) * c)
                dst = out[:, a:b, w0:w1].reshape(shape)
                src = p[:, a + dr: b + dr, w0 + dc: w1 + dc].reshape(shape)
                wt = wrow[tap, : shape[2]]
                if k == 0 and full:
                    np.multiply(src, wt, out=dst)
                else:
                    tmp = workspace.get("dw_tmp", shape, xt.dtype)
                    np.multiply(src, wt, out=tmp)
                    dst += tmp
            finish_output(out[:, r0:r1], bias, relu)

    if DEPTHWISE_FORWARD_PARALLEL:
        parallel_for(ho, run, out.nbytes * max(len(taps), 1))
    else:
        run(0, ho)
    return out


def _depthwise_multiplier(xt: np.ndarray, weight: np.ndarray, geo: dict,
                          bias: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
    """Depthwise convolution with a channel multiplier: per tap, out += x_tap * w_tap, on
    batch chunks small enough for the running sum and its temporary to stay in cache."""
    n, h, w, c = xt.shape
    o, _, kh, kw = weight.shape
    mult = o // c
    ho, wo = geo["out_hw"]
    out = _recycle.empty((n, ho, wo, c, mult), dtype=xt.dtype)
    wv = np.ascontiguousarray(weight.reshape(c, mult, kh * kw).transpose(2, 0, 1))  # (taps, C, mult)
    taps = list(_depthwise_taps(geo, h, w))
    full = (slice(0, ho), slice(0, wo))
    per_sample = ho * wo * o * xt.itemsize
    step = max(1, DEPTHWISE_CHUNK_BYTES // per_sample)

    def run(start, stop):
        for n0 in range(start, stop, step):
            n1 = min(stop, n0 + step)
            dst_all = out[n0:n1]
            tmp = workspace.get("dw_tmp", dst_all.shape, xt.dtype)
            first = True
            for i, j, (oh, ow), (ih, iw) in taps:
                src = xt[n0:n1, ih, iw, :, None]
                wt = wv[i * kw + j]
                if first and (oh, ow) == full:
                    np.multiply(src, wt, out=dst_all)
                    first = False
                    continue
                if first:
                    dst_all.fill(0)
                    first = False
                dst, t = dst_all[:, oh, ow], tmp[:, oh, ow]
                np.multiply(src, wt, out=t)
                np.add(dst, t, out=dst)
            if first:  # no tap inside the image at all
                dst_all.fill(0)
            finish_output(dst_all, None if bias is None else bias.reshape(c, mult), relu)

    parallel_for(n, run, out.nbytes * len(taps))
    return out.reshape(n, ho, wo, o)


def depthwise_backward(g, xt, weight, geo, need_input_grad, need_weight_grad):
    n, h, w, c = xt.shape
    o, _, kh, kw = weight.shape
    mult = o // c
    ho, wo = geo["out_hw"]
    g5 = g.reshape(n, ho, wo, c, mult)
    wv = np.ascontiguousarray(weight.reshape(c, mult, kh * kw).transpose(2, 0, 1))  # (taps, C, mult)
    gx = _recycle.zeros((n, h, w, c), dtype=xt.dtype) if need_input_grad else None
    taps = list(_depthwise_taps(geo, h, w))
    per_sample = max(ho * wo * o, h * w * c) * xt.itemsize
    step = max(1, DEPTHWISE_CHUNK_BYTES // per_sample)

    def run(start, stop):
        gw = np.zeros((kh * kw, c, mult), dtype=xt.dtype) if need_weight_grad else None
        for n0 in range(start, stop, step):
            n1 = min(stop, n0 + step)
            tmp = workspace.get("dw_tmp", (n1 - n0, ho, wo, c, mult), xt.dtype)
            for i, j, (oh, ow), (ih, iw) in taps:
                gsub = g5[n0:n1, oh, ow]
                t = tmp[:, oh, ow]
                if need_weight_grad:  # einsum sums the products without a temporary (2x faster)
                    gw[i * kw + j] += np.einsum("nhwc,nhwcm->cm", xt[n0:n1, ih, iw], gsub)
                if need_input_grad:
                    dst = gx[n0:n1, ih, iw]
                    if mult == 1:
                        t4 = t[..., 0]
                        np.multiply(gsub[..., 0], wv[i * kw + j, :, 0], out=t4)
                        np.add(dst, t4, out=dst)
                    else:
                        np.multiply(gsub, wv[i * kw + j], out=t)
                        dst += t.sum(axis=-1)
        return gw

    parts = parallel_for(n, run, g.nbytes * len(taps))
    gw = None
    if need_weight_grad:
        gw = parts[0]
        for p in parts[1:]:
            gw += p
        gw = np.ascontiguousarray(gw.transpose(1, 2, 0)).reshape(o, 1, kh, kw)
    return gx, gw
