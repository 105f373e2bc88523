"""nn._jit_conv: the compiled horizontal-tap adds of the row-tap input gradient give the
NumPy path's bits and the float64 gradient, and really run."""

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import Conv2d, _jit, _jit_conv
from cnnkit.nn import _kernels as F

from spy_helpers import count_calls
from test_conv import ROW_TAP_LAYERS, _spy_on_mkl_kernel

pytest.importorskip("numba")


@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("kwargs,shape", ROW_TAP_LAYERS)
def test_compiled_row_tap_adds_equal_numpy_bits_and_float64(kwargs, shape, chunk_bytes, monkeypatch):
    from cnnkit.nn import _conv_kernels
    monkeypatch.setattr(_conv_kernels, "GX_TRANSPOSED_FACTOR", 0)     # col2im's branch
    monkeypatch.setattr(_conv_kernels, "COMPILED_COL2IM_MAX_C", 0)    # ... by row columns
    row_tap_calls = _spy_on_mkl_kernel(monkeypatch, "_row_tap_input_grad", chunk_bytes)
    compiled_calls = count_calls(monkeypatch, _jit_conv, "add_row_taps")
    rng = np.random.default_rng(31)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    w = layer.weight.data
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal(shape).astype(dtype)
        out, cache = F.conv2d_forward(x, w.astype(dtype), None, layer.stride, layer.padding, layer.dilation, 1)
        g = rng.standard_normal(out.shape).astype(dtype)
        try:
            _jit.set_enabled(True)
            gx = F.conv2d_backward(g, cache, w.astype(dtype))[0].copy()
            assert compiled_calls and row_tap_calls
            _jit.set_enabled(False)
            n_calls = compiled_calls["add_row_taps"]
            gx_numpy = F.conv2d_backward(g, cache, w.astype(dtype))[0].copy()
            assert compiled_calls["add_row_taps"] == n_calls             # NumPy's adds ran
        finally:
            _jit.set_enabled(None)
        np.testing.assert_array_equal(gx, gx_numpy)
        if dtype == np.float64:
            # Against the plain col2im of the float64 products.
            monkeypatch.setattr(_conv_kernels, "ROW_TAPS", False)
            ref = F.conv2d_backward(g, cache, w.astype(dtype))[0]
            monkeypatch.setattr(_conv_kernels, "ROW_TAPS", True)
            np.testing.assert_allclose(gx, ref, rtol=1e-12, atol=1e-12)


# (N, H, W, C), kw, stride_w, dilation_w, pads (top, bottom, left, right): 'same' 3x3,
# strided and dilated rows, uneven pads, a crop (negative pads), a kernel wider than the pad.
ROW_COLUMN_CASES = [
    ((2, 6, 7, 3), 3, 1, 1, (1, 1, 1, 1)),
    ((2, 9, 11, 4), 5, 2, 1, (2, 2, 2, 2)),
    ((1, 8, 9, 2), 3, 1, 2, (0, 1, 2, 0)),
    ((2, 7, 8, 5), 3, 1, 1, (-1, 0, -1, 1)),
    ((3, 5, 4, 1), 5, 1, 1, (2, 2, 3, 3)),
]


def _nhwc_input(shape, dtype, layout: str, seed: int) -> np.ndarray:
    """Random NHWC values with a NaN, laid out "contiguous", "strided" (every other image of a
    bigger batch) or "nchw" (channels not contiguous)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[3] = np.nan
    if layout == "strided":
        big = np.zeros((2 * shape[0],) + shape[1:], dtype)
        big[::2] = x
        x = big[::2]
    if layout == "nchw":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    return x


def _numpy_row_columns(x, kw, sw, dw, pads, wo):
    from cnnkit.nn import _im2col
    try:
        _jit.set_enabled(False)
        return _im2col.im2col_rows(x, kw, sw, dw, pads, wo)
    finally:
        _jit.set_enabled(None)


@pytest.mark.parametrize("shape,kw,sw,dw,pads", ROW_COLUMN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "nchw"])
def test_compiled_row_columns_equal_numpy_copy(shape, kw, sw, dw, pads, dtype, layout, monkeypatch):
    from cnnkit.nn import _im2col
    x = _nhwc_input(shape, dtype, layout, seed=5)
    w = shape[2] + pads[2] + pads[3]
    wo = (w - (kw - 1) * dw - 1) // sw + 1
    monkeypatch.setattr(_im2col, "COMPILED_MIN_CHANNELS", 1)
    calls = count_calls(monkeypatch, _jit_conv, "row_columns")
    _jit.set_enabled(True)
    try:
        rows = _im2col.im2col_rows(x, kw, sw, dw, pads, wo)
    finally:
        _jit.set_enabled(None)
    assert calls == {"row_columns": 1}
    expected = _numpy_row_columns(x, kw, sw, dw, pads, wo)
    assert rows.shape == expected.shape
    np.testing.assert_array_equal(rows, expected)
    # Spot check against the definition: entry (n, r, xo, j) is padded pixel (r, xo*sw + j*dw).
    padded = np.zeros((shape[0], shape[1] + max(pads[0], 0) + max(pads[1], 0),
                       shape[2] + max(pads[2], 0) + max(pads[3], 0), shape[3]), dtype)
    crop = x[:, max(-pads[0], 0): shape[1] - max(-pads[1], 0), max(-pads[2], 0): shape[2] - max(-pads[3], 0)]
    padded[:, max(pads[0], 0): max(pads[0], 0) + crop.shape[1], max(pads[2], 0): max(pads[2], 0) + crop.shape[2]] = crop
    r, xo, j = rows.shape[1] - 1, wo - 1, kw - 1
    np.testing.assert_array_equal(rows[:, r, xo, j], padded[:, r, xo * sw + j * dw])


def test_row_tap_convolution_with_compiled_columns_matches_float64_reference(monkeypatch):
    """The whole row-tap forward through the compiled copy, against a float64 im2col run."""
    from cnnkit.nn import _conv_kernels, _im2col, _small_channel_conv
    monkeypatch.setattr(_small_channel_conv, "BLOCK_N", 0)    # no row blocks for few outputs
    monkeypatch.setattr(_im2col, "COMPILED_MIN_CHANNELS", 1)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 16, 14, 6))
    layer = Conv2d(6, 5, 3, padding=1)
    w = layer.weight.data.astype(np.float64)
    calls = count_calls(monkeypatch, _jit_conv, "row_columns")
    kernel_calls = _spy_on_mkl_kernel(monkeypatch, "_row_tap_conv", None)
    _jit.set_enabled(True)
    try:
        out = F.conv2d(x.astype(np.float32).transpose(0, 3, 1, 2), layer.weight.data, None, 1, 1)
    finally:
        _jit.set_enabled(None)
    assert calls and kernel_calls
    monkeypatch.setattr(_conv_kernels, "ROW_TAPS", False)
    ref = F.conv2d(x.transpose(0, 3, 1, 2), w, None, 1, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


# (N, H, W, C), kernel, stride, dilation, pads (top, bottom, left, right).
COLUMN_CASES = [
    ((2, 6, 7, 3), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((2, 9, 11, 4), (5, 3), (2, 1), (1, 2), (2, 1, 0, 3)),
    ((1, 8, 9, 2), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0)),
    ((2, 7, 8, 5), (3, 3), (1, 2), (2, 1), (-1, 2, 1, -1)),
]


@pytest.mark.parametrize("shape,kernel,stride,dilation,pads", COLUMN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "nchw"])
def test_compiled_columns_equal_numpy_im2col(shape, kernel, stride, dilation, pads, dtype, layout, monkeypatch):
    from cnnkit.nn import _im2col
    x = _nhwc_input(shape, dtype, layout, seed=6)
    out_hw = tuple((size + pads[2 * a] + pads[2 * a + 1] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
                   for a, size in enumerate(shape[1:3]))
    monkeypatch.setattr(_im2col, "COMPILED_MIN_CHANNELS", 1)
    calls = count_calls(monkeypatch, _jit_conv, "columns")
    _jit.set_enabled(True)
    try:
        cols = _im2col.im2col(x, kernel, stride, dilation, pads, out_hw)
        _jit.set_enabled(False)
        expected = _im2col.im2col(x, kernel, stride, dilation, pads, out_hw)
    finally:
        _jit.set_enabled(None)
    assert calls == {"columns": 1}
    np.testing.assert_array_equal(cols, expected)


def test_grouped_and_few_channel_columns_stay_on_numpy(monkeypatch):
    from cnnkit.nn import _im2col
    calls = count_calls(monkeypatch, _jit_conv, "columns", "row_columns")
    rng = np.random.default_rng(7)
    wide = rng.standard_normal((2, 5, 5, 64)).astype(np.float32)
    narrow = rng.standard_normal((2, 5, 5, _im2col.COMPILED_MIN_CHANNELS - 1)).astype(np.float32)
    _jit.set_enabled(True)
    try:
        cols = _im2col.im2col(wide, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (5, 5), groups=2)
        _im2col.im2col(narrow, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (5, 5))
        _im2col.im2col_rows(narrow, 3, 1, 1, (1, 1, 1, 1), 5)
        assert calls == {}
        _im2col.im2col(wide, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (5, 5))
        _im2col.im2col_rows(wide, 3, 1, 1, (1, 1, 1, 1), 5)
    finally:
        _jit.set_enabled(None)
    assert calls == {"columns": 1, "row_columns": 1} and cols.shape == (2, 2, 5, 5, 3, 3, 32)


# col2im geometries: (N, H, W, C), kernel, stride, dilation, pads: 'same' 3x3, LeNet's valid
# 5x5, strided, dilated with uneven pads, a crop (negative pads), a kernel wider than the pad.
COL2IM_CASES = [
    ((2, 6, 7, 3), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((3, 12, 12, 10), (5, 5), (1, 1), (1, 1), (0, 0, 0, 0)),
    ((2, 9, 11, 4), (3, 5), (2, 2), (1, 1), (1, 1, 2, 2)),
    ((1, 8, 9, 2), (3, 3), (1, 2), (2, 1), (2, 0, 1, 1)),
    ((2, 7, 8, 5), (3, 3), (1, 1), (1, 1), (-1, 0, -1, 1)),
    ((1, 4, 5, 1), (5, 5), (1, 1), (1, 1), (2, 2, 3, 3)),
]


@pytest.mark.parametrize("shape,kernel,stride,dilation,pads", COL2IM_CASES)
def test_compiled_col2im_equals_numpy_bits_and_is_the_adjoint(shape, kernel, stride, dilation, pads, monkeypatch):
    from cnnkit.nn import _im2col
    calls = count_calls(monkeypatch, _jit_conv, "add_taps")
    n, h, w, c = shape
    ho = (h + pads[0] + pads[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + pads[2] + pads[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    rng = np.random.default_rng(32)
    for dtype in (np.float32, np.float64):
        cols = rng.standard_normal((1, n, ho, wo, *kernel, c)).astype(dtype)
        try:
            _jit.set_enabled(True)
            got = _im2col.col2im(cols, (h, w), stride, dilation, pads, out=np.full(shape, np.nan, dtype))
            assert calls["add_taps"] >= 1
            _jit.set_enabled(False)
            before = calls["add_taps"]
            ref = _im2col.col2im(cols, (h, w), stride, dilation, pads)
            assert calls["add_taps"] == before                          # NumPy's adds ran
        finally:
            _jit.set_enabled(None)
        np.testing.assert_array_equal(got, ref)
        if dtype == np.float64:
            # The adjoint of im2col: <im2col(x), cols> == <x, col2im(cols)>.
            x = rng.standard_normal(shape)
            lhs = np.sum(_im2col.im2col(x, kernel, stride, dilation, pads, (ho, wo)) * cols)
            np.testing.assert_allclose(lhs, np.sum(x * got), rtol=1e-12)


@pytest.mark.parametrize("one_image_chunks", [False, True])
@pytest.mark.parametrize("kwargs,shape", [
    (dict(in_channels=10, out_channels=20, kernel_size=5), (4, 10, 12, 12)),     # LeNet's second layer
    (dict(in_channels=3, out_channels=16, kernel_size=3, stride=2, padding=1), (2, 3, 9, 8)),
])
def test_few_channel_input_gradient_takes_the_compiled_col2im(kwargs, shape, one_image_chunks, monkeypatch):
    # With Numba on, an input gradient of <= COMPILED_COL2IM_MAX_C channels that goes
    # through col2im is one GEMM and the compiled sweep per chunk of images; the same
    # values as the tap-major NumPy path (Numba off), within the float32 rounding of the
    # C_out * taps products.
    from float32_tolerance import assert_float32_close
    from cnnkit.nn import _conv_kernels
    if one_image_chunks:
        monkeypatch.setattr(_conv_kernels, "COMPILED_COL2IM_CHUNK_BYTES", 1)
    calls = count_calls(monkeypatch, _jit_conv, "add_taps")
    rng = np.random.default_rng(33)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    x = rng.standard_normal(shape).astype(np.float32)
    w = layer.weight.data
    out, cache = F.conv2d_forward(x, w, None, layer.stride, layer.padding, layer.dilation, 1)
    g = rng.standard_normal(out.shape).astype(np.float32)
    try:
        _jit.set_enabled(True)
        gx = F.conv2d_backward(g, cache, w)[0].copy()
        assert calls.get("add_taps", 0) >= (shape[0] if one_image_chunks else 1)
        _jit.set_enabled(False)
        gx_numpy = F.conv2d_backward(g, cache, w)[0].copy()
    finally:
        _jit.set_enabled(None)
    assert_float32_close(gx, gx_numpy, w.shape[0] * w.shape[2] * w.shape[3])
