"""Geometry, padding and im2col / col2im for the convolution and pooling kernels.

Layout: the kernels work on NHWC arrays (the NHWC view of an NCHW argument is free, see
``nn._kernels``). im2col pads the input into a scratch buffer once and then takes all
receptive fields as one ``as_strided`` view copied in a single ``np.copyto``: measured 3-4x
faster than one strided copy per kernel tap (and than a plain memcpy of the result size,
because the source is read from cache).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._buffers import workspace
from . import _jit, _jit_conv


# ---------------------------------------------------------------------------------- sizes
def pair(value, name: str = "value", minimum: int = 1) -> tuple[int, int]:
    """``value`` (an int or a pair of ints) as a tuple of two ints, each >= ``minimum``."""
    # The common case first, cheaply: every layer call passes its stored pairs here.
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if value[0] < minimum or value[1] < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def conv_output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int = 1) -> int:
    """Output length of a convolution along one axis (floor mode)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding ``(before, after)`` along one axis: the output has
    ``ceil(size / stride)`` elements and the odd pixel goes after (bottom / right).
    For stride 1 this equals PyTorch's ``padding='same'``."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_conv_padding(padding, size_hw: tuple[int, int], kernel: tuple[int, int],
                         stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """Convolution padding (int, pair, 'valid' or 'same') as ``(top, bottom, left, right)``."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            top, bottom = same_padding(size_hw[0], kernel[0], stride[0], dilation[0])
            left, right = same_padding(size_hw[1], kernel[1], stride[1], dilation[1])
            return top, bottom, left, right
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return ph, ph, pw, pw


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis, with PyTorch's ceil_mode rule:
    in ceil mode the last window must start inside the input or the left padding."""
    span = size + 2 * pad - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


def tap_windows(in_size: int, out_size: int, kernel: int, stride: int, dilation: int,
                pad_before: int) -> list:
    """For every kernel tap along one axis: ``(out_slice, in_slice)`` covering the outputs
    whose tap reads a pixel inside the input (not in the padding), or None if none does."""
    taps = []
    for i in range(kernel):
        off = i * dilation - pad_before           # input index read by output 0
        o0 = max(0, -(off // stride))             # first output reading index >= 0
        o1 = min(out_size, (in_size - 1 - off) // stride + 1) if in_size - 1 - off >= 0 else 0
        if o1 <= o0:
            taps.append(None)
            continue
        start = off + o0 * stride
        taps.append((slice(o0, o1), slice(start, start + (o1 - o0 - 1) * stride + 1, stride)))
    return taps


def nhwc(x: np.ndarray) -> np.ndarray:
    """The NHWC view of an NCHW array (no copy)."""
    return x.transpose(0, 2, 3, 1)


def nchw(x: np.ndarray) -> np.ndarray:
    """The NCHW view of an NHWC array (no copy)."""
    return x.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------- padding
def pad_nhwc(x: np.ndarray, pads: tuple[int, int, int, int], buffer: str = "pad",
             channels_first: bool = False) -> np.ndarray:
    """Zero-pad an NHWC array by (top, bottom, left, right) (negative amounts crop).

    Returns ``x`` itself when there is nothing to do and its layout already fits: channels
    contiguous, or with ``channels_first`` image rows contiguous. Otherwise the NHWC view of
    a *scratch* array from the workspace named ``buffer`` (valid until the next request of
    that name), laid out channels last, or channels first (each image plane contiguous) with
    ``channels_first``. Only the border strips are zeroed.
    """
    t, b, l, r = pads
    n, h, w, c = x.shape
    fits = x.strides[2] == x.itemsize or w == 1 if channels_first else x.strides[3] == x.itemsize or c == 1
    if not (t or b or l or r) and fits:
        return x
    src = x[:, max(-t, 0): h - max(-b, 0), max(-l, 0): w - max(-r, 0)]
    t, b, l, r = max(t, 0), max(b, 0), max(l, 0), max(r, 0)
    hp, wp = t + src.shape[1] + b, l + src.shape[2] + r
    if channels_first:
        out = workspace.get(buffer, (n, c, hp, wp), x.dtype).transpose(0, 2, 3, 1)
    else:
        out = workspace.get(buffer, (n, hp, wp, c), x.dtype)
    if t:
        out[:, :t] = 0
    if b:
        out[:, hp - b:] = 0
    if l:
        out[:, t: hp - b, :l] = 0
    if r:
        out[:, t: hp - b, wp - r:] = 0
    out[:, t: hp - b, l: wp - r] = src
    return out


# ---------------------------------------------------------------------------------- im2col
#: The compiled column copies (``_jit_conv``) run for inputs with at least this many channels.
#: With fewer, NumPy's copy of an unpadded input is faster: it moves runs of kw*C values,
#: the compiled loop runs of C (5x5 taps, 32 images, one thread, NumPy / compiled: C = 10
#: 0.09 / 0.18 ms, C = 20 0.21 / 0.25-0.29 ms; 3x3 'same', C = 32 1.63 / 1.31 ms, C = 64
#: 0.81 / 0.61 ms, C = 512 0.56 / 0.37 ms).
COMPILED_MIN_CHANNELS = 32


def _compiled_copy(x: np.ndarray, out: np.ndarray) -> bool:
    """Whether the compiled copy into ``out`` runs (see ``COMPILED_MIN_CHANNELS``)."""
    return (x.shape[-1] >= COMPILED_MIN_CHANNELS and _jit.enabled() and out.flags.c_contiguous
            and out.dtype == x.dtype)


def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
           pads: tuple[int, int, int, int], out_hw: tuple[int, int], groups: int = 1,
           out: np.ndarray | None = None) -> np.ndarray:
    """Columns of a convolution.

    Args:
        x: input in NHWC order (any strides), shape (N, H, W, C).
        kernel, stride, dilation: pairs (h, w).
        pads: (top, bottom, left, right) zero padding (negative crops).
        out_hw: output size (Ho, Wo).
        groups: G; the channels split into G groups of C // G.
        out: optional destination of the result's shape (e.g. a workspace buffer).

    Returns:
        Array of shape (G, N, Ho, Wo, kh, kw, C // G): row (n, ho, wo) of group g holds the
        receptive field of output pixel (n, ho, wo), taps row-major, channels last.
    """
    n, h, w, c = x.shape
    kh, kw = kernel
    ho, wo = out_hw
    cg = c // groups
    shape = (groups, n, ho, wo, kh, kw, cg)
    cols = np.empty(shape, dtype=x.dtype) if out is None else out
    if groups == 1 and _compiled_copy(x, cols):
        # One compiled sweep from the unpadded input (no padded copy), the same values.
        _jit_conv.columns(x, cols[0], pads[0], pads[2], stride[0], stride[1], dilation[0], dilation[1])
        return cols
    xp = pad_nhwc(x, pads, "im2col_pad")
    s0, s1, s2, s3 = xp.strides
    view = as_strided(xp, shape, (cg * s3, s0, s1 * stride[0], s2 * stride[1], s1 * dilation[0],
                                  s2 * dilation[1], s3), writeable=False)
    np.copyto(cols, view)
    return cols


def im2col_rows(x: np.ndarray, kw: int, stride_w: int, dilation_w: int, pads: tuple[int, int, int, int],
                out_w: int, out: np.ndarray | None = None) -> np.ndarray:
    """Row columns: the receptive fields of one kernel *row*, for every padded input row.

    Why: for a convolution of vertical stride 1, output row y and kernel row i read padded
    input row y + i*dh. So with one (Wo, kw*C) block per padded input row, kernel row i's
    columns of all outputs of an image are those blocks shifted down by i*dh rows: a
    strided view, no copy. The convolution is then kh products with K = kw*C accumulated
    in place (``_conv_kernels._row_tap_conv``), and this copy is kw*C values per input
    pixel instead of im2col's kh*kw*C.

    Args:
        x: input in NHWC order (any strides), shape (N, H, W, C).
        kw, stride_w, dilation_w: the kernel's width, horizontal stride and dilation.
        pads: (top, bottom, left, right) zero padding (negative crops).
        out_w: output width Wo.
        out: optional destination of the result's shape (e.g. a workspace buffer).

    Returns:
        Array (N, Hp, Wo, kw, C), Hp = H + top + bottom: entry (n, r, x, j) holds the C
        channels of padded pixel (r, x*sw + j*dw).
    """
    n, h, w, c = x.shape
    shape = (n, h + pads[0] + pads[1], out_w, kw, c)
    rows = np.empty(shape, dtype=x.dtype) if out is None else out
    if _compiled_copy(x, rows):
        # One compiled sweep from the unpadded input (no padded copy), the same values.
        _jit_conv.row_columns(x, rows, pads[0], pads[2], stride_w, dilation_w)
        return rows
    xp = pad_nhwc(x, pads, "im2col_pad")
    s0, s1, s2, s3 = xp.strides
    np.copyto(rows, as_strided(xp, shape, (s0, s1, s2 * stride_w, s2 * dilation_w, s3), writeable=False))
    return rows


def im2col_channels_first(x: np.ndarray, kernel, stride, dilation, pads, out_hw,
                          out: np.ndarray | None = None) -> np.ndarray:
    """Columns in channels-first order, for inputs with very few channels (a network's
    first layer: 1 or 3 channels). Why: with channels last and C = 1 every copied run is a
    single value; channels first, runs are image rows (4x faster measured).

    Args:
        x: input (N, C, H, W) (any strides). The rest as ``im2col``.

    Returns:
        Array (C, kh, kw, N, Ho, Wo): row (c, i, j) of the (K, N*Ho*Wo) matrix holds tap
        (i, j) of channel c for every output pixel; K is ordered like a (O, C, kh, kw)
        weight's trailing axes, so the GEMM needs no weight transpose.
    """
    n, c, h, w = x.shape
    kh, kw = kernel
    ho, wo = out_hw
    shape = (c, kh, kw, n, ho, wo)
    cols = np.empty(shape, dtype=x.dtype) if out is None else out
    # Padded (or re-laid-out) copy with contiguous image rows: the copies below move rows.
    xp = nchw(pad_nhwc(nhwc(x), pads, "im2col_pad_cf", channels_first=True))
    s0, s1, s2, s3 = xp.strides
    view = as_strided(xp, shape, (s1, s2 * dilation[0], s3 * dilation[1], s0, s2 * stride[0], s3 * stride[1]),
                      writeable=False)
    np.copyto(cols, view)
    return cols


def tap_pairs(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel, stride, dilation, pads):
    """For every kernel tap (i, j) that reads inside the image: ``(i, j, (out_h, out_w),
    (in_h, in_w))``, slices of the outputs whose tap (i, j) reads a pixel inside the input
    and of the input pixels they read (``pads`` is (top, bottom, left, right))."""
    hwin = tap_windows(in_hw[0], out_hw[0], kernel[0], stride[0], dilation[0], pads[0])
    wwin = tap_windows(in_hw[1], out_hw[1], kernel[1], stride[1], dilation[1], pads[2])
    for i, hw in enumerate(hwin):
        if hw is None:
            continue
        for j, ww in enumerate(wwin):
            if ww is not None:
                yield i, j, (hw[0], ww[0]), (hw[1], ww[1])


def col2im(cols: np.ndarray, in_hw: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
           pads: tuple[int, int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Adjoint of ``im2col``: add columns (G, N, Ho, Wo, kh, kw, Cg) back into an NHWC image
    (N, H, W, G*Cg), one strided slice per kernel tap; taps in the padding are dropped."""
    g, n, ho, wo, kh, kw, cg = cols.shape
    h, w = in_hw
    if out is None:
        out = np.empty((n, h, w, g * cg), dtype=cols.dtype)
    if g == 1 and _jit.enabled() and out.flags.c_contiguous and cols.flags.c_contiguous:
        # One compiled sweep per image, the same adds in the same order (``_jit_conv``).
        _jit_conv.add_taps(cols[0], out, pads[0], pads[2], stride[0], stride[1], dilation[0], dilation[1])
        return out
    out[...] = 0
    og = out.reshape(n, h, w, g, cg).transpose(3, 0, 1, 2, 4)
    for i, j, (ho_s, wo_s), (hi_s, wi_s) in tap_pairs(in_hw, (ho, wo), (kh, kw), stride, dilation, pads):
        og[:, :, hi_s, wi_s] += cols[:, :, ho_s, wo_s, i, j, :]
    return out


def col2im_tap_major(cols: np.ndarray, in_hw: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int], pads: tuple[int, int, int, int],
                     out: np.ndarray | None = None) -> np.ndarray:
    """``col2im`` of tap-major columns (kh, kw, N, Ho, Wo, C) (one group): every tap adds a
    contiguous (N, Ho, Wo, C) block, where ``col2im``'s source runs are only C values long
    (measured on LeNet's 10-channel input gradient: 2.3 -> 1.3 ms)."""
    kh, kw, n, ho, wo, c = cols.shape
    h, w = in_hw
    if out is None:
        out = np.zeros((n, h, w, c), dtype=cols.dtype)
    else:
        out[...] = 0
    for i, j, (ho_s, wo_s), (hi_s, wi_s) in tap_pairs(in_hw, (ho, wo), (kh, kw), stride, dilation, pads):
        out[:, hi_s, wi_s] += cols[i, j, :, ho_s, wo_s]
    return out
