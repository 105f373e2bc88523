"""nn._jit_conv: the compiled horizontal-tap adds of the row-tap input gradient give the
NumPy path's bits and the float64 gradient, and really run."""

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import Conv2d, _jit, _jit_conv
from cnnkit.nn import functional as F

from spy_helpers import count_calls
from test_conv import ROW_TAP_LAYERS, _spy_on_mkl_kernel

pytest.importorskip("numba")


@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("kwargs,shape", ROW_TAP_LAYERS)
def test_compiled_row_tap_adds_equal_numpy_bits_and_float64(kwargs, shape, chunk_bytes, monkeypatch):
    from cnnkit.nn import _conv_kernels
    monkeypatch.setattr(_conv_kernels, "GX_TRANSPOSED_FACTOR", 0)     # col2im's branch
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
