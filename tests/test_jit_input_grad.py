"""nn._jit_input_grad: a thread's share of a convolution's col2im input gradient in one
compiled call gives the bits of the Python steps it replaces (the product, the compiled
col2im, the folded ReLU mask), for strided, dilated, padded and cropped layers, in one
chunk or one image per chunk, on one or two threads; its values are the layer's (against
float64); and it runs."""

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import Conv2d, _conv_kernels, _jit_input_grad, _parallel
from cnnkit.nn import _kernels as F

from float32_tolerance import assert_float32_close
from spy_helpers import count_calls, route_products_to_mkl
from test_jit_weight_grad import LAYERS

pytest.importorskip("numba")

# The weight-gradient test's layers, and LeNet's second layer (10 -> 20, 5x5 at 12x12).
LAYERS = LAYERS[:4] + [(dict(in_channels=10, out_channels=20, kernel_size=5), (6, 10, 12, 12))]


@pytest.fixture
def mkl_col2im(monkeypatch):
    """Products on MKL as inside the thread pool, every input gradient through col2im
    (not as a transposed convolution); skips where MKL cannot load."""
    route_products_to_mkl(monkeypatch)
    monkeypatch.setattr(_conv_kernels, "GX_TRANSPOSED_FACTOR", 0)


def _input_grad(layer, x, g, mask):
    w = layer.weight.data
    x, xt, geo, _ = F._conv_setup(x, w, None, layer.stride, layer.padding, layer.dilation, 1, False)
    return _conv_kernels.gemm_conv_input_grad(g, w, 1, geo, xt.shape, relu_mask=mask).copy()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("kwargs,shape", LAYERS)
def test_one_compiled_call_equals_the_python_steps_bit_for_bit(kwargs, shape, chunk_bytes, threads, masked,
                                                              mkl_col2im, monkeypatch):
    if chunk_bytes:                                   # one image per chunk, both paths
        monkeypatch.setattr(_conv_kernels, "COMPILED_COL2IM_CHUNK_BYTES", chunk_bytes)
    if threads > 1:
        monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)
    cnnkit.set_num_threads(threads)                   # tests/conftest.py restores the default
    rng = np.random.default_rng(11)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    x = rng.standard_normal(shape).astype(np.float32)
    out_shape = layer(x).shape
    g = rng.standard_normal((out_shape[0], out_shape[2], out_shape[3], out_shape[1])).astype(np.float32)
    mask = rng.standard_normal(shape).astype(np.float32).transpose(0, 2, 3, 1).copy() if masked else None
    calls = count_calls(monkeypatch, _jit_input_grad, "input_grad")
    compiled = _input_grad(layer, x, g, mask)
    ran = calls.get("input_grad", 0)
    assert ran >= 1
    real_usable = _jit_input_grad.usable
    monkeypatch.setattr(_jit_input_grad, "usable", lambda *a: False)
    python = _input_grad(layer, x, g, mask)
    assert calls.get("input_grad", 0) == ran          # the Python steps this time
    np.testing.assert_array_equal(compiled, python)
    # And the values are the layer's: against float64 (each input pixel sums at most
    # O*kh*kw products).
    monkeypatch.setattr(_jit_input_grad, "usable", real_usable)
    ref = Conv2d(**kwargs).double()
    ref.load_state_dict(layer.state_dict())
    _, cache = F.conv2d_forward(x.astype(np.float64), ref.weight.data, None, layer.stride, layer.padding,
                                layer.dilation, keep_cache=True)
    gx64, _, _ = F.conv2d_backward(g.transpose(0, 3, 1, 2).astype(np.float64), cache, ref.weight.data,
                                   need_weight_grad=False, need_bias_grad=False)
    if masked:
        gx64 = gx64 * (mask.transpose(0, 3, 1, 2) > 0)
    k = layer.weight.shape[0] * layer.weight.shape[2] * layer.weight.shape[3]
    assert_float32_close(compiled.transpose(0, 3, 1, 2), gx64, n_terms=k)


def test_not_used_for_strided_operands():
    g = np.zeros((2, 4, 4, 3), np.float32)
    gx = np.zeros((2, 6, 6, 5), np.float32)
    assert _jit_input_grad.usable(g, gx, None)
    assert not _jit_input_grad.usable(g.transpose(0, 2, 1, 3), gx, None)
    assert not _jit_input_grad.usable(g, gx, gx.transpose(0, 2, 1, 3))
    assert not _jit_input_grad.usable(g.astype(np.float64), gx.astype(np.float64), None)
