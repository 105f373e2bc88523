"""nn._jit_row_taps: a thread's share of a row-tap convolution in one compiled call gives
the bits of the Python steps it replaces (the same copies, products and output pass), for
every layer shape the row taps take, with bias, fused ReLU or ReLU6 and the folded ReLU
mask; and it really runs."""

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import Conv2d, _conv_kernels, _gemm, _jit, _jit_row_taps
from cnnkit.nn import _kernels as F

from float32_tolerance import assert_float32_close
from spy_helpers import count_calls, route_products_to_mkl
from test_conv import ROW_TAP_LAYERS

pytest.importorskip("numba")

# The row-tap layers of test_conv, and two with the channel counts the compiled call is
# used for by default (the 4-conv net's 32 -> 32 at 28x28, smaller; 64 -> 64 at 14x14).
LAYERS = ROW_TAP_LAYERS + [
    (dict(in_channels=32, out_channels=32, kernel_size=3, padding=1), (3, 32, 12, 12)),
    (dict(in_channels=64, out_channels=48, kernel_size=3, padding=1), (2, 64, 7, 9)),
]


@pytest.fixture
def mkl_row_taps(monkeypatch):
    """Products on MKL as inside the thread pool, row taps for every layer, input gradients
    as convolutions; skips where MKL cannot load."""
    route_products_to_mkl(monkeypatch)
    monkeypatch.setattr(_conv_kernels, "ROW_TAPS_MIN_PIXELS", 1)
    monkeypatch.setattr(_conv_kernels, "GX_TRANSPOSED_FACTOR", 10 ** 6)


def _forward_and_input_grad(layer, x, g, relu, mask):
    """NHWC forward (bias, fused ReLU) and the input gradient with a folded ReLU mask,
    straight through the convolution kernels."""
    w, b = layer.weight.data, layer.bias.data
    x, xt, geo, b = F._conv_setup(x, w, b, layer.stride, layer.padding, layer.dilation, 1, False)
    out = _conv_kernels.conv_forward_kernel(xt.shape[3], w, 1, geo, b, relu=relu)(xt)
    gt = np.ascontiguousarray(g.transpose(0, 2, 3, 1))
    gx = _conv_kernels.gemm_conv_input_grad(gt, w, 1, geo, xt.shape, relu_mask=mask)
    return out.copy(), gx.copy()


@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("relu", [False, True, 6.0])
@pytest.mark.parametrize("kwargs,shape", LAYERS)
def test_one_compiled_call_equals_the_python_steps_bit_for_bit(kwargs, shape, relu, chunk_bytes,
                                                              mkl_row_taps, monkeypatch):
    if chunk_bytes:                                  # one image per chunk, both paths
        monkeypatch.setattr(_conv_kernels, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(_conv_kernels, "COMPILED_ROW_TAPS_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(5)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    x = rng.standard_normal(shape).astype(np.float32)
    out_shape = layer(x).shape
    g = rng.standard_normal(out_shape).astype(np.float32)
    mask = rng.standard_normal(shape).astype(np.float32).transpose(0, 2, 3, 1).copy()   # NHWC
    calls = count_calls(monkeypatch, _jit_row_taps, "conv")
    results = {}
    for min_c in (1, 10 ** 6):                      # compiled, then the Python steps
        monkeypatch.setattr(_conv_kernels, "COMPILED_ROW_TAPS_MIN_C", min_c)
        before = calls.get("conv", 0)
        results[min_c] = _forward_and_input_grad(layer, x, g, relu, mask)
        ran = calls.get("conv", 0) - before
        assert (ran > 0) == (min_c == 1)
    for compiled, python in zip(results[1], results[10 ** 6]):
        np.testing.assert_array_equal(compiled, python)
    # And the values are the layer's: against float64.
    ref = Conv2d(**kwargs).double()
    ref.load_state_dict(layer.state_dict())
    expected = ref(x.astype(np.float64))
    if relu is not False:
        expected = np.clip(expected, 0, np.inf if relu is True else relu)
    k = layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3]
    assert_float32_close(results[1][0].transpose(0, 3, 1, 2), expected, n_terms=k)


def test_the_compiled_call_needs_mkl_and_float32(mkl_row_taps, monkeypatch):
    """It runs only where its GEMM can: float32 operands with MKL as the backend."""
    out = np.empty((2, 4, 4, 3), np.float32)
    x = np.empty((2, 4, 4, 5), np.float32)
    assert _jit_row_taps.usable(x, out, None)
    assert not _jit_row_taps.usable(x.astype(np.float64), out.astype(np.float64), None)
    assert not _jit_row_taps.usable(x, out, np.empty((2, 4, 4, 3), np.float64))
    _gemm.set_backend("numpy")
    assert not _jit_row_taps.usable(x, out, None)
    _gemm.set_backend("mkl")
    _jit.set_enabled(False)
    assert not _jit_row_taps.usable(x, out, None)
