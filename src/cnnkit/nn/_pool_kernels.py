"""Pooling kernels (NHWC inside, see ``nn.functional``): a loop over the kernel's taps,
each step one strided slice of the whole batch.

Fast path: when every tap's slice covers the whole output (no padding, floor mode or
sizes that divide), each step is a single ``np.maximum`` / add of two strided views, with
no padding and no masks. Non-overlapping windows (stride >= kernel, e.g. 2x2 / 2) also
*assign* their gradient slices instead of adding into a zeroed array.

Max pooling keeps the index of the winning tap (uint8: a quarter of the output's float32
bytes, where PyTorch keeps int64) and only in training; ties go to the first tap in
row-major order, as in PyTorch.
"""

from __future__ import annotations

import numpy as np

from ._im2col import nchw, nhwc, pair, pool_output_size, tap_windows


def pool_geometry(x, kernel, stride, padding, ceil_mode, name):
    """Validated pooling geometry (sizes, tap windows and which fast paths apply)."""
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    kernel = pair(kernel, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding", minimum=0)
    for p, k in zip(padding, kernel):
        if p > k // 2:
            raise ValueError(f"{name}: padding should be at most half of kernel_size, got padding="
                             f"{padding} for kernel_size={kernel}")
    n, c, h, w = x.shape
    ho = pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{name}: input of spatial size ({h}, {w}) with padding {padding} is too small for "
            f"kernel_size {kernel}"
        )
    hwin = tap_windows(h, ho, kernel[0], stride[0], 1, padding[0])
    wwin = tap_windows(w, wo, kernel[1], stride[1], 1, padding[1])
    full_h, full_w = slice(0, ho), slice(0, wo)
    covers = all(t is not None and t[0] == full_h for t in hwin) and all(
        t is not None and t[0] == full_w for t in wwin)
    # Windows tile the input exactly: every input pixel is in exactly one window.
    tiles = covers and stride == kernel and ho * kernel[0] == h and wo * kernel[1] == w
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    return dict(kernel=kernel, stride=stride, padding=padding, in_hw=(h, w), out_hw=(ho, wo),
                hwin=hwin, wwin=wwin, covers=covers, tiles=tiles, disjoint=disjoint)


def _taps(geo):
    """(tap index, out slices, in slices) for every tap that reads inside the input."""
    kw = geo["kernel"][1]
    for i, hw in enumerate(geo["hwin"]):
        if hw is None:
            continue
        for j, ww in enumerate(geo["wwin"]):
            if ww is None:
                continue
            yield i * kw + j, (hw[0], ww[0]), (hw[1], ww[1])


# ---------------------------------------------------------------------------------- max
def max_pool2d_forward(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                       keep_cache: bool = True):
    """Max pooling. Returns ``(out, cache)``; cache None when ``keep_cache`` is False."""
    geo = pool_geometry(x, kernel_size, stride, padding, ceil_mode, "max_pool2d")
    n, c, h, w = x.shape
    ho, wo = geo["out_hw"]
    xt = nhwc(x)
    taps = [(t, o, xt[:, i[0], i[1]]) for t, o, i in _taps(geo)]
    if geo["covers"] and len(taps) == 4 and keep_cache:
        out, idx = _max4_with_index([src for _, _, src in taps])
        return nchw(out), (idx, geo, x.shape)
    if geo["covers"]:
        if len(taps) == 1:
            out = taps[0][2].copy()
        else:
            out = np.maximum(taps[0][2], taps[1][2])
            for _, _, src in taps[2:]:
                np.maximum(out, src, out=out)
    else:
        out = np.full((n, ho, wo, c), -np.inf, dtype=x.dtype)
        for _, o, src in taps:
            dst = out[:, o[0], o[1]]
            np.maximum(dst, src, out=dst)
    cache = None
    if keep_cache:
        ntaps = geo["kernel"][0] * geo["kernel"][1]
        idx_dtype = np.uint8 if ntaps <= 256 else np.int32
        # Last tap first, so that the first maximal tap is the one left standing.
        idx = np.full((n, ho, wo, c), taps[-1][0], dtype=idx_dtype)
        eq = np.empty((n, ho, wo, c), dtype=bool)
        for t, o, src in reversed(taps[:-1]):
            e = eq[:, o[0], o[1]]
            np.equal(src, out[:, o[0], o[1]], out=e)
            np.putmask(idx[:, o[0], o[1]], e, t)
        cache = (idx, geo, x.shape)
    return nchw(out), cache


def _max4_with_index(v):
    """Max of four same-shape views (taps 0..3 of a 2x2 window) and the index of the first
    maximal one, as a tournament: two pairs, then the pair winners (2x faster than
    comparing every tap with the result)."""
    m1 = np.maximum(v[0], v[1])
    m2 = np.maximum(v[2], v[3])
    i1 = np.greater(v[1], v[0]).view(np.uint8)     # pair winners, ties to the first
    i2 = np.greater(v[3], v[2]).view(np.uint8)
    second = np.greater(m2, m1).view(np.uint8)
    np.maximum(m1, m2, out=m1)
    # idx = second ? 2 + i2 : i1, in uint8 arithmetic.
    idx = i2 + np.uint8(2)
    idx -= i1
    idx *= second
    idx += i1
    return m1, idx


def max_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``max_pool2d_forward``: each output's gradient goes to its winning tap."""
    idx, geo, (n, c, h, w) = cache
    g = nhwc(grad_out)
    sel = np.empty(idx.shape, dtype=bool)
    if geo["disjoint"]:
        gx = np.empty((n, h, w, c), dtype=grad_out.dtype) if geo["tiles"] else np.zeros((n, h, w, c), grad_out.dtype)
        for t, o, i in _taps(geo):
            s = sel[:, o[0], o[1]]
            np.equal(idx[:, o[0], o[1]], t, out=s)
            np.multiply(g[:, o[0], o[1]], s, out=gx[:, i[0], i[1]])
        return nchw(gx)
    gx = np.zeros((n, h, w, c), dtype=grad_out.dtype)
    for t, o, i in _taps(geo):
        s = sel[:, o[0], o[1]]
        np.equal(idx[:, o[0], o[1]], t, out=s)
        gx[:, i[0], i[1]] += g[:, o[0], o[1]] * s
    return nchw(gx)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False) -> np.ndarray:
    """Max pooling forward only."""
    return max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, keep_cache=False)[0]


# ---------------------------------------------------------------------------------- average
def _avg_divisor(geo, count_include_pad: bool):
    """Reciprocal window sizes, a scalar or (Ho, Wo, 1). PyTorch's rule: windows are
    clipped to the padded input; without count_include_pad only pixels inside count."""
    if geo["covers"] and geo["padding"] == (0, 0):
        return 1.0 / (geo["kernel"][0] * geo["kernel"][1])
    counts = []
    for axis in (0, 1):
        size, k, s, p = geo["in_hw"][axis], geo["kernel"][axis], geo["stride"][axis], geo["padding"][axis]
        start = np.arange(geo["out_hw"][axis]) * s - p
        end = np.minimum(start + k, size + p)
        if count_include_pad:
            counts.append(end - start)
        else:
            counts.append(np.minimum(end, size) - np.maximum(start, 0))
    return (1.0 / np.outer(counts[0], counts[1]))[:, :, None]


def avg_pool2d_forward(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                       count_include_pad: bool = True, keep_cache: bool = True):
    """Average pooling with PyTorch's divisor rules. Returns ``(out, cache)``."""
    geo = pool_geometry(x, kernel_size, stride, padding, ceil_mode, "avg_pool2d")
    n, c, h, w = x.shape
    ho, wo = geo["out_hw"]
    xt = nhwc(x)
    inv = _avg_divisor(geo, count_include_pad)
    inv = x.dtype.type(inv) if np.isscalar(inv) else inv.astype(x.dtype)
    taps = [(o, xt[:, i[0], i[1]]) for _, o, i in _taps(geo)]
    if geo["covers"]:
        out = taps[0][1] + taps[1][1] if len(taps) > 1 else taps[0][1].copy()
        for _, src in taps[2:]:
            np.add(out, src, out=out)
    else:
        out = np.zeros((n, ho, wo, c), dtype=x.dtype)
        for o, src in taps:
            dst = out[:, o[0], o[1]]
            np.add(dst, src, out=dst)
    out *= inv
    cache = (inv, geo, x.shape) if keep_cache else None
    return nchw(out), cache


def avg_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``avg_pool2d_forward``."""
    inv, geo, (n, c, h, w) = cache
    gs = nhwc(grad_out) * inv
    if geo["disjoint"] and geo["covers"]:
        gx = np.empty((n, h, w, c), dtype=grad_out.dtype) if geo["tiles"] else np.zeros((n, h, w, c), grad_out.dtype)
        for _, o, i in _taps(geo):
            gx[:, i[0], i[1]] = gs
        return nchw(gx)
    gx = np.zeros((n, h, w, c), dtype=grad_out.dtype)
    for _, o, i in _taps(geo):
        dst = gx[:, i[0], i[1]]
        np.add(dst, gs[:, o[0], o[1]], out=dst)
    return nchw(gx)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> np.ndarray:
    """Average pooling forward only."""
    return avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, keep_cache=False)[0]


# ---------------------------------------------------------------------------------- adaptive
def adaptive_windows(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) averaging matrix of PyTorch's adaptive pooling: output i averages
    inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1."""
    i = np.arange(out_size)
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    j = np.arange(in_size)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside / (end - start)[:, None]


def _adaptive_size(output_size, h, w) -> tuple[int, int]:
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    oh, ow = output_size
    return (h if oh is None else int(oh)), (w if ow is None else int(ow))


def adaptive_avg_pool2d_forward(x: np.ndarray, output_size, keep_cache: bool = True):
    """Adaptive average pooling to ``output_size`` (int, pair, None entries keep the size)."""
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    oh, ow = _adaptive_size(output_size, h, w)
    if oh < 1 or ow < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got {output_size!r}")
    xt = nhwc(x)
    if oh == 1 and ow == 1:
        out = xt.sum(axis=(1, 2), keepdims=True) * x.dtype.type(1.0 / (h * w))
        return nchw(out), ("global", (n, c, h, w))
    if h % oh == 0 and w % ow == 0:
        # Equal windows: plain average pooling with kernel = stride = H / oh.
        out, cache = avg_pool2d_forward(x, (h // oh, w // ow))
        return out, ("avg", cache)
    ph = adaptive_windows(h, oh).astype(x.dtype)
    pw = adaptive_windows(w, ow).astype(x.dtype)
    # out[n,i,j,c] = sum_h sum_w ph[i,h] pw[j,w] x[n,h,w,c], as two matmuls.
    tmp = np.matmul(ph, np.ascontiguousarray(xt).reshape(n, h, w * c))        # (N, oh, W*C)
    out = np.matmul(pw, tmp.reshape(n * oh, w, c)).reshape(n, oh, ow, c)      # (N, oh, ow, C)
    return nchw(out), ("matrix", ((n, c, h, w), ph, pw))


def adaptive_avg_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``adaptive_avg_pool2d_forward``."""
    kind, data = cache
    if kind == "avg":
        return avg_pool2d_backward(grad_out, data)
    g = nhwc(grad_out)
    if kind == "global":
        n, c, h, w = data
        gx = np.empty((n, h, w, c), dtype=grad_out.dtype)
        gx[...] = g * grad_out.dtype.type(1.0 / (h * w))
        return nchw(gx)
    (n, c, h, w), ph, pw = data
    oh, ow = ph.shape[0], pw.shape[0]
    tmp = np.matmul(pw.T, np.ascontiguousarray(g).reshape(n * oh, ow, c))     # (N*oh, W, C)
    gx = np.matmul(ph.T, tmp.reshape(n, oh, w * c)).reshape(n, h, w, c)
    return nchw(gx)


def adaptive_avg_pool2d(x: np.ndarray, output_size) -> np.ndarray:
    """Adaptive average pooling forward only."""
    return adaptive_avg_pool2d_forward(x, output_size, keep_cache=False)[0]
