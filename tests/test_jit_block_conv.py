"""nn._jit_block_conv: the compiled row-block columns are NumPy's bit for bit (padding,
strides, dilation, the column of ones), and a thread's share of the forward pass or of the
weight gradient in one compiled call gives the layer's values (against float64 and
PyTorch), on one thread and two, in one chunk or many; and it really runs."""

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import Conv2d, _conv_kernels, _jit, _jit_block_conv, _parallel, _small_channel_conv
from cnnkit.nn import _kernels as F

from float32_tolerance import assert_float32_close
from spy_helpers import count_calls, use_mkl_products

pytest.importorskip("numba")

# (C, O, kernel, stride, padding, dilation, input (N, H, W), block width P)
BLOCK_LAYERS = [
    (1, 10, 5, 1, 0, 1, (3, 28, 28), 8),     # LeNet conv1
    (10, 20, 5, 1, 0, 1, (2, 12, 12), 2),    # LeNet conv2
    (3, 8, 3, 1, 1, 1, (2, 9, 10), 5),       # padded: blocks that start and end in the padding
    (2, 4, 3, 2, 2, 1, (2, 11, 13), 2),      # stride 2, wide padding
    (2, 3, 3, 1, 1, 2, (1, 9, 8), 3),        # dilation 2
    (4, 5, (2, 4), 1, (1, 2), 1, (2, 7, 9), 5),   # non-square kernel and padding
]


def _geometry(c, o, k, stride, pad, dil, hw, p):
    x = np.zeros((1, c) + hw[1:], np.float32)
    w = np.zeros((o, c) + ((k, k) if isinstance(k, int) else k), np.float32)
    _, xt, geo, _ = F._conv_setup(x, w, None, stride, pad, dil, 1, False)
    assert geo["out_hw"][1] % p == 0, "the test layer's Wo must be a multiple of P"
    j = (p - 1) * geo["stride"][1] + (w.shape[3] - 1) * geo["dilation"][1] + 1
    return geo, j


@pytest.mark.parametrize("ones", [False, True])
@pytest.mark.parametrize("c,o,k,stride,pad,dil,hw,p", BLOCK_LAYERS)
def test_compiled_block_columns_equal_numpys(c, o, k, stride, pad, dil, hw, p, ones):
    geo, j = _geometry(c, o, k, stride, pad, dil, hw, p)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((hw[0], hw[1], hw[2], c)).astype(np.float32)      # NHWC, C-contiguous
    assert _jit_block_conv.copy_usable(x, geo["pads"], False)
    compiled = _small_channel_conv.block_columns(x, geo, p, j, False, ones).copy()
    _jit.set_enabled(False)
    try:
        numpy_cols = _small_channel_conv.block_columns(x, geo, p, j, False, ones).copy()
    finally:
        _jit.set_enabled(None)
    # A copy: the same values, the padding's zeros included, and the ones column.
    np.testing.assert_array_equal(compiled, numpy_cols)


def test_the_copy_is_not_used_where_it_does_not_apply():
    x = np.zeros((2, 5, 5, 3), np.float32)
    assert not _jit_block_conv.copy_usable(x, (0, 0, 0, 0), True)             # channels-first order
    assert not _jit_block_conv.copy_usable(x.transpose(0, 2, 1, 3), (0, 0, 0, 0), False)   # strided
    assert not _jit_block_conv.copy_usable(x, (-1, 0, 0, 0), False)           # a crop


@pytest.fixture
def mkl_products(monkeypatch):
    """MKL as the GEMM backend, as inside the thread pool, every batch split over the
    threads; skips where MKL cannot load."""
    use_mkl_products(monkeypatch)
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)


def _route_to_row_blocks(monkeypatch, p):
    """Row blocks of P pixels for the test's layer (whatever its channels)."""
    monkeypatch.setattr(_conv_kernels, "small_c_block", lambda *args: p)


def _layer(c, o, k, stride, pad, dil, seed=0):
    cnnkit.manual_seed(seed)
    return Conv2d(c, o, k, stride=stride, padding=pad, dilation=dil)


@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("c,o,k,stride,pad,dil,hw,p", BLOCK_LAYERS)
def test_one_compiled_call_gives_the_layers_values(c, o, k, stride, pad, dil, hw, p, relu, threads, chunk_bytes,
                                                   mkl_products, monkeypatch):
    if chunk_bytes:                                   # one image per chunk
        monkeypatch.setattr(_small_channel_conv, "COMPILED_CHUNK_BYTES", chunk_bytes)
    F.set_num_threads(threads)                        # tests/conftest.py restores the default
    calls = count_calls(monkeypatch, _jit_block_conv, "conv", "weight_grad")
    rng = np.random.default_rng(3)
    layer = _layer(c, o, k, stride, pad, dil)
    w, b = layer.weight.data, layer.bias.data
    x = rng.standard_normal((hw[0], hw[1], hw[2], c)).astype(np.float32).transpose(0, 3, 1, 2)   # NHWC memory
    x, xt, geo, b = F._conv_setup(x, w, b, stride, pad, dil, 1, False)
    _route_to_row_blocks(monkeypatch, p)
    out = _conv_kernels.conv_forward_kernel(c, w, 1, geo, b, relu=relu)(xt).copy()       # NHWC
    g = rng.standard_normal(out.shape).astype(np.float32)
    gw, gb = _conv_kernels.gemm_conv_param_grads(g, xt, w.shape, 1, geo, True, True)
    assert calls.get("conv", 0) >= 1 and calls.get("weight_grad", 0) >= 1
    # Against float64: the forward sums C*kh*kw products (+ the bias); the weight and bias
    # gradients one product per output pixel.
    ref = _layer(c, o, k, stride, pad, dil).double()
    x64 = x.astype(np.float64)
    expected = ref(x64)
    if relu:
        expected = np.maximum(expected, 0)
    assert_float32_close(out.transpose(0, 3, 1, 2), expected, n_terms=c * w.shape[2] * w.shape[3] + 1)
    ref_out, cache = F.conv2d_forward(x64, ref.weight.data, ref.bias.data, stride, pad, dil, keep_cache=True)
    _, gw64, gb64 = F.conv2d_backward(g.transpose(0, 3, 1, 2).astype(np.float64), cache, ref.weight.data,
                                      need_input_grad=False)
    pixels = out.shape[0] * out.shape[1] * out.shape[2]
    assert_float32_close(gw, gw64, n_terms=pixels)
    assert_float32_close(gb, gb64, n_terms=pixels)


@pytest.mark.parametrize("c,o,k,stride,pad,dil,hw,p", BLOCK_LAYERS[:3])
def test_one_compiled_call_parity_with_torch(c, o, k, stride, pad, dil, hw, p, mkl_products, monkeypatch):
    torch = pytest.importorskip("torch")
    F.set_num_threads(2)
    _route_to_row_blocks(monkeypatch, p)
    calls = count_calls(monkeypatch, _jit_block_conv, "conv", "weight_grad")
    rng = np.random.default_rng(4)
    layer = _layer(c, o, k, stride, pad, dil)
    x = rng.standard_normal(hw + (c,)).astype(np.float32).transpose(0, 3, 1, 2)    # an activation's NHWC memory
    out = layer(cnnkit.tensor(x, requires_grad=True))
    g = rng.standard_normal(out.shape).astype(np.float32)
    out.backward(cnnkit.from_numpy(g))
    assert calls.get("conv", 0) >= 1 and calls.get("weight_grad", 0) >= 1
    xt = torch.from_numpy(np.ascontiguousarray(x))
    wt = torch.from_numpy(layer.weight.data.copy()).requires_grad_()
    bt = torch.from_numpy(layer.bias.data.copy()).requires_grad_()
    ot = torch.nn.functional.conv2d(xt, wt, bt, stride, pad, dil)
    ot.backward(torch.from_numpy(g))
    pixels = out.shape[0] * out.shape[2] * out.shape[3]
    assert_float32_close(out.detach().numpy(), ot.detach().numpy(), n_terms=c * k * k + 1)
    assert_float32_close(layer.weight.grad.numpy(), wt.grad.numpy(), n_terms=pixels)
    assert_float32_close(layer.bias.grad.numpy(), bt.grad.numpy(), n_terms=pixels)


def test_the_one_call_path_stays_off_without_mkl(monkeypatch):
    from cnnkit.nn import _jit_blas
    monkeypatch.setattr(_jit_blas, "available", lambda: False)
    x = np.zeros((2, 12, 12, 10), np.float32)
    assert _jit_block_conv.copy_usable(x, (0, 0, 0, 0), False)
    assert not _jit_block_conv.usable(x, (0, 0, 0, 0), False)
