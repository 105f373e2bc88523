"""nn._jit_weight_grad: a thread's share of a convolution's weight gradient in one compiled
call gives the bits of the Python steps it replaces, for strided, dilated, padded and
cropped layers, in one chunk or one image per chunk, on one or two threads; and it runs."""

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import Conv2d, _conv_kernels, _im2col, _jit_weight_grad, _parallel
from cnnkit.nn import _kernels as F

from float32_tolerance import assert_float32_close
from spy_helpers import count_calls, route_products_to_mkl

pytest.importorskip("numba")

LAYERS = [
    # (constructor kwargs, input shape): 'same' 3x3; stride 2 with dilation; a 5x3 kernel
    # with uneven padding; 'valid'; the 4-conv net's 32 -> 64 layer, smaller.
    (dict(in_channels=6, out_channels=7, kernel_size=3, padding=1), (5, 6, 9, 11)),
    (dict(in_channels=4, out_channels=5, kernel_size=3, stride=2, dilation=2, padding=2), (3, 4, 13, 10)),
    (dict(in_channels=5, out_channels=3, kernel_size=(5, 3), padding=(2, 0)), (4, 5, 8, 9)),
    (dict(in_channels=3, out_channels=8, kernel_size=4), (2, 3, 7, 7)),
    (dict(in_channels=32, out_channels=64, kernel_size=3, padding=1), (4, 32, 10, 10)),
]


@pytest.fixture
def mkl_products(monkeypatch):
    """Products on MKL as inside the thread pool, the compiled im2col for every channel
    count (both paths copy with it), no Winograd; skips where MKL cannot load."""
    route_products_to_mkl(monkeypatch)
    monkeypatch.setattr(_im2col, "COMPILED_MIN_CHANNELS", 1)
    from cnnkit.nn import _winograd
    monkeypatch.setattr(_winograd, "MIN_CHANNEL_PRODUCT", 10 ** 9)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("kwargs,shape", LAYERS)
def test_one_compiled_call_equals_the_python_steps_bit_for_bit(kwargs, shape, chunk_bytes, threads,
                                                              mkl_products, monkeypatch):
    # Both paths cut the batch alike (the chunks decide the order of the sums): all images
    # in one chunk, or one image per chunk.
    chunk_bytes = chunk_bytes or 1 << 30
    monkeypatch.setattr(_conv_kernels, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(_conv_kernels, "COMPILED_WGRAD_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(_conv_kernels, "WGRAD_MAX_CHUNK_BYTES", 1 << 30)
    if threads > 1:
        monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)
    cnnkit.set_num_threads(threads)
    rng = np.random.default_rng(9)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    w, b = layer.weight.data, layer.bias.data
    x = rng.standard_normal(shape).astype(np.float32)
    x, xt, geo, b = F._conv_setup(x, w, b, layer.stride, layer.padding, layer.dilation, 1, False)
    n, ho, wo, o = (shape[0], *geo["out_hw"], w.shape[0])
    g = rng.standard_normal((n, ho, wo, o)).astype(np.float32)
    calls = count_calls(monkeypatch, _jit_weight_grad, "weight_grad")
    compiled = _conv_kernels.gemm_conv_param_grads(g, xt, w.shape, 1, geo)
    assert calls.get("weight_grad", 0) > 0
    ran = calls["weight_grad"]
    monkeypatch.setattr(_jit_weight_grad, "usable", lambda *a: False)
    python = _conv_kernels.gemm_conv_param_grads(g, xt, w.shape, 1, geo)
    assert calls["weight_grad"] == ran                    # the Python steps ran this time
    for a, b_ in zip(compiled, python):
        np.testing.assert_array_equal(a, b_)
    # And it is the weight gradient: against float64 sums.
    _, cache = F.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, layer.stride,
                                layer.padding, layer.dilation, 1)
    gw64 = F.conv2d_backward(g.astype(np.float64).transpose(0, 3, 1, 2), cache, w.astype(np.float64),
                             need_input_grad=False, need_bias_grad=False)[1]
    assert_float32_close(compiled[0], gw64, n_terms=n * ho * wo)
