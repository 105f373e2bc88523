"""Pooling kernels (NHWC inside, see ``nn._kernels``): a loop over the kernel's taps,
each step one strided slice of the whole batch.

Fast path: when every tap's slice covers the whole output (no padding, floor mode or
sizes that divide), each step is a single ``np.maximum`` / add of two strided views, with
no padding and no masks. Non-overlapping windows (stride >= kernel, e.g. 2x2 / 2) also
*assign* their gradient slices instead of adding into a zeroed array.

Max pooling keeps the index of the winning tap (uint8: a quarter of the output's float32
bytes, where PyTorch keeps int64) and only in training; ties go to the first tap in
row-major order, as in PyTorch. When the input is a ReLU's output whose backward is folded
into the pool's (``relu_input``), windows whose maximum is not > 0 get a *dead* index that
matches no tap, so their gradient is 0, exactly what the ReLU's backward would make of it.
"""

from __future__ import annotations

import numpy as np

from ._im2col import nchw, nhwc, pair, pool_output_size, tap_windows
from . import _jit_pool, _recycle
from ._parallel import parallel_for


_geometries: dict = {}
#: Pooling geometries remembered (a network has a handful; the cache is cleared when full).
MAX_GEOMETRIES = 256


def pool_geometry(x, kernel, stride, padding, ceil_mode, name):
    """Validated pooling geometry (sizes, tap windows and which fast paths apply) for an
    input ``x`` (an array, or just its shape). The dict is shared between calls with the
    same arguments (every training step asks again): read it, never modify it."""
    shape = tuple(getattr(x, "shape", x))
    kernel = pair(kernel, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding", minimum=0)
    key = (shape, kernel, stride, padding, bool(ceil_mode), name)      # ints only: hashable
    geo = _geometries.get(key)
    if geo is None:
        geo = _pool_geometry(shape, kernel, stride, padding, ceil_mode, name)
        if len(_geometries) >= MAX_GEOMETRIES:
            _geometries.clear()
        _geometries[key] = geo
    return geo


def _pool_geometry(shape, kernel, stride, padding, ceil_mode, name):
    if len(shape) != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {shape}")
    for p, k in zip(padding, kernel):
        if p > k // 2:
            raise ValueError(f"{name}: padding should be at most half of kernel_size, got padding="
                             f"{padding} for kernel_size={kernel}")
    n, c, h, w = shape
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
#: Index bit of a dead window (see the module's docstring), for uint8 and int32 indices.
_DEAD_BIT = {np.dtype(np.uint8): 1 << 7, np.dtype(np.int32): 1 << 30}


def max_pool2d_forward(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                       keep_cache: bool = True, relu_input: bool = False):
    """Max pooling. Returns ``(out, cache)``; cache None when ``keep_cache`` is False.

    ``relu_input``: x is the output of a ReLU whose backward is folded into this pool's:
    ``max_pool2d_backward`` then returns the gradient with respect to that ReLU's input (0
    in every window whose maximum is not > 0; elsewhere the winner is > 0 and passes)."""
    geo = pool_geometry(x, kernel_size, stride, padding, ceil_mode, "max_pool2d")
    out, idx = max_pool_outputs(geo, x.shape, x.dtype, keep_cache)
    xt = nhwc(x)

    def run(a, b):
        max_pool_chunk(xt[a:b], geo, out[a:b], None if idx is None else idx[a:b], relu_input)

    parallel_for(x.shape[0], run, x.nbytes)
    return nchw(out), (None if idx is None else (idx, geo, x.shape))


def max_pool_outputs(geo: dict, in_shape, dtype, keep_index: bool):
    """Fresh NHWC arrays for a max pool of an (N, C, H, W) input: (out, index or None)."""
    n, c = in_shape[:2]
    ho, wo = geo["out_hw"]
    out = _recycle.empty((n, ho, wo, c), dtype=dtype)
    idx = None
    if keep_index:
        ntaps = geo["kernel"][0] * geo["kernel"][1]
        idx = _recycle.empty((n, ho, wo, c), dtype=np.uint8 if ntaps < _DEAD_BIT[np.dtype(np.uint8)] else np.int32)
    return out, idx


def max_pool_chunk(xt: np.ndarray, geo: dict, out: np.ndarray, idx: np.ndarray | None = None,
                   relu_input: bool = False) -> None:
    """Max-pool a batch chunk: NHWC input ``xt`` -> the same images' NHWC ``out``, and the
    winning taps into ``idx`` unless it is None (``relu_input``: see ``max_pool2d_forward``).
    Serial: the caller shares the chunks out to the threads."""
    if _jit_pool.usable(geo, xt, out, idx):
        if idx is None:
            _jit_pool.max_pool_2x2(xt, out)
        else:
            _jit_pool.max_pool_2x2_index(xt, out, idx, _DEAD_BIT[idx.dtype] if relu_input else 0)
        return
    src = [(t, o, xt[:, i[0], i[1]]) for t, o, i in _taps(geo)]
    _max_into(src, geo["covers"], out, idx)
    if relu_input and idx is not None:
        dead = np.greater(out, 0)                 # a quarter of the input: cheap
        np.logical_not(dead, out=dead)
        idx |= dead.view(np.uint8) * idx.dtype.type(_DEAD_BIT[idx.dtype])


def _max_into(taps, covers, out, idx):
    if covers and len(taps) == 4 and idx is not None:
        return _max4_with_index([src for _, _, src in taps], out, idx)
    if covers:
        if len(taps) == 1:
            np.copyto(out, taps[0][2])
        else:
            np.maximum(taps[0][2], taps[1][2], out=out)
            for _, _, src in taps[2:]:
                np.maximum(out, src, out=out)
    else:
        out.fill(-np.inf)
        for _, o, src in taps:
            dst = out[:, o[0], o[1]]
            np.maximum(dst, src, out=dst)
    if idx is not None:
        # Last tap first, so that the first maximal tap is the one left standing.
        idx.fill(taps[-1][0])
        eq = np.empty(out.shape, dtype=bool)
        for t, o, src in reversed(taps[:-1]):
            e = eq[:, o[0], o[1]]
            np.equal(src, out[:, o[0], o[1]], out=e)
            np.putmask(idx[:, o[0], o[1]], e, t)


def _max4_with_index(v, out, idx):
    """Max of four same-shape views (taps 0..3 of a 2x2 window) and the index of the first
    maximal one, as a tournament: two pairs, then the pair winners (2x faster than
    comparing every tap with the result)."""
    m1 = np.maximum(v[0], v[1])
    m2 = np.maximum(v[2], v[3])
    i1 = np.greater(v[1], v[0]).view(np.uint8)     # pair winners, ties to the first
    i2 = np.greater(v[3], v[2]).view(np.uint8)
    second = np.greater(m2, m1).view(np.uint8)
    np.maximum(m1, m2, out=out)
    # idx = second ? 2 + i2 : i1, in uint8 arithmetic.
    np.add(i2, np.uint8(2), out=idx)
    idx -= i1
    idx *= second
    idx += i1


def max_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``max_pool2d_forward``: each output's gradient goes to its winning tap."""
    idx, geo, (n, c, h, w) = cache
    g = nhwc(grad_out)
    fresh = _recycle.empty if geo["disjoint"] and geo["tiles"] else _recycle.zeros
    gx = fresh((n, h, w, c), dtype=grad_out.dtype)
    if _jit_pool.usable(geo, gx, idx):
        def run(a, b):
            # A gradient in NCHW memory (from a Flatten) is made NHWC here: a quarter of
            # gx's size, cheaper than a compiled variant for strided arrays.
            _jit_pool.max_pool_2x2_scatter(np.ascontiguousarray(g[a:b]), idx[a:b], gx[a:b])

        parallel_for(n, run, gx.nbytes)
        return nchw(gx)
    taps = list(_taps(geo))

    def run(a, b):
        sel = np.empty((b - a,) + idx.shape[1:], dtype=bool)
        for t, o, i in taps:
            s = sel[:, o[0], o[1]]
            np.equal(idx[a:b, o[0], o[1]], t, out=s)
            if geo["disjoint"]:  # each input pixel in at most one window: assign
                np.multiply(g[a:b, o[0], o[1]], s, out=gx[a:b, i[0], i[1]])
            else:
                gx[a:b, i[0], i[1]] += g[a:b, o[0], o[1]] * s

    parallel_for(n, run, gx.nbytes)
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
    inv = avg_pool_divisor(geo, count_include_pad, x.dtype)
    out = _recycle.empty((n, ho, wo, c), dtype=x.dtype)
    parallel_for(n, lambda a, b: avg_pool_chunk(xt[a:b], geo, inv, out[a:b]), x.nbytes)
    cache = (inv, geo, x.shape) if keep_cache else None
    return nchw(out), cache


def avg_pool_divisor(geo: dict, count_include_pad: bool, dtype):
    """1 / window size in ``dtype``: a scalar, or per output pixel (Ho, Wo, 1) where the
    windows differ (padding without count_include_pad, ceil_mode)."""
    inv = _avg_divisor(geo, count_include_pad)
    return np.dtype(dtype).type(inv) if np.isscalar(inv) else inv.astype(dtype)


def avg_pool_chunk(xt: np.ndarray, geo: dict, inv, out: np.ndarray) -> None:
    """Average-pool a batch chunk: NHWC input ``xt`` -> the same images' NHWC ``out``;
    ``inv`` from ``avg_pool_divisor``. Serial: the caller shares the chunks out to the
    threads."""
    if np.isscalar(inv) and _jit_pool.usable(geo, xt, out):
        _jit_pool.avg_pool_2x2(xt, out, inv)
        return
    src = [(o, xt[:, i[0], i[1]]) for _, o, i in _taps(geo)]
    if geo["covers"]:
        if len(src) == 1:
            np.copyto(out, src[0][1])
        else:
            np.add(src[0][1], src[1][1], out=out)
            for _, v in src[2:]:
                np.add(out, v, out=out)
    else:
        out.fill(0)
        for o, v in src:
            dst = out[:, o[0], o[1]]
            np.add(dst, v, out=dst)
    out *= inv


def avg_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Gradient of ``avg_pool2d_forward``."""
    inv, geo, (n, c, h, w) = cache
    g = nhwc(grad_out)
    assign = geo["disjoint"] and geo["covers"]
    fresh = np.empty if assign and geo["tiles"] else np.zeros
    gx = fresh((n, h, w, c), dtype=grad_out.dtype)
    taps = [(o, i) for _, o, i in _taps(geo)]
    compiled = assign and np.isscalar(inv) and _jit_pool.usable(geo, g, gx)

    def run(a, b):
        if compiled:
            _jit_pool.avg_pool_2x2_scatter(g[a:b], inv, gx[a:b])
            return
        gs = g[a:b] * inv
        for o, i in taps:
            dst = gx[a:b, i[0], i[1]]
            if assign:  # each input pixel in exactly one window
                np.copyto(dst, gs)
            else:
                np.add(dst, gs[:, o[0], o[1]], out=dst)

    parallel_for(n, run, gx.nbytes)
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
        gx = _recycle.empty((n, h, w, c), dtype=grad_out.dtype)
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
