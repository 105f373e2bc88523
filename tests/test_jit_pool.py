"""nn._jit_pool: the compiled 2x2 max and average pooling against the NumPy kernels (bit for bit),
finite differences and PyTorch, and that the compiled path really runs."""

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import AvgPool2d, Conv2d, MaxPool2d, ReLU, Sequential, _jit, _jit_pool
from cnnkit.nn import _pool_kernels as P

from spy_helpers import count_calls

pytest.importorskip("numba")

SHAPES = [(2, 6, 8, 3), (2, 7, 5, 2), (3, 24, 24, 10), (2, 28, 28, 32)]   # NHWC; odd = floor


@pytest.fixture
def spy(monkeypatch):
    """Compiled kernels on; counts the calls of each compiled pooling kernel."""
    _jit.set_enabled(True)
    yield count_calls(monkeypatch, _jit_pool, "max_pool_2x2_index", "max_pool_2x2", "max_pool_2x2_scatter")
    _jit.set_enabled(None)


def _channels_last(x):
    """The NCHW view of NHWC memory, as layers hand activations to each other."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _inputs(rng, shape, dtype):
    """Random NHWC values with ties (rounded), zeros, negatives and a NaN."""
    x = np.round(rng.standard_normal(shape) * 2) / 2
    x.flat[rng.integers(x.size, size=3)] = 0.0
    x.flat[5] = np.nan
    return x.astype(dtype)


def _both_paths(fn):
    """fn() with the compiled kernels, then with the NumPy ones."""
    _jit.set_enabled(True)
    compiled = fn()
    _jit.set_enabled(False)
    try:
        return compiled, fn()
    finally:
        _jit.set_enabled(True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu_input", [False, True])
def test_forward_index_and_scatter_equal_numpy_bits(shape, dtype, relu_input, spy):
    rng = np.random.default_rng(0)
    x = _inputs(rng, shape, dtype).transpose(0, 3, 1, 2)          # NCHW view of NHWC memory
    n, h, w, c = shape
    g = rng.standard_normal((n, h // 2, w // 2, c)).astype(dtype).transpose(0, 3, 1, 2)

    def run():
        out, cache = P.max_pool2d_forward(x, 2, relu_input=relu_input)
        plain = P.max_pool2d(x, 2)
        return out.copy(), cache[0].copy(), plain.copy(), P.max_pool2d_backward(g, cache).copy()

    (out, idx, plain, gx), (ref_out, ref_idx, ref_plain, ref_gx) = _both_paths(run)
    np.testing.assert_array_equal(out, ref_out)        # NaN in the same places too
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(plain, ref_plain)
    np.testing.assert_array_equal(gx, ref_gx)
    assert spy == {"max_pool_2x2_index": 1, "max_pool_2x2": 1, "max_pool_2x2_scatter": 1}


def test_floor_mode_leaves_the_uncovered_edge_at_zero(spy):
    rng = np.random.default_rng(1)
    x = _channels_last(rng.standard_normal((2, 3, 7, 5)).astype(np.float32))
    layer = MaxPool2d(2)
    out = layer(x)
    gx = layer.backward(np.ones_like(out))
    assert spy["max_pool_2x2_scatter"] == 1
    assert not gx[:, :, 6].any() and not gx[:, :, :, 4].any()
    assert gx.sum() == out.size                          # each output's 1 lands once


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 2, 7, 5)])
def test_gradcheck_float64_through_the_compiled_kernels(shape, spy):
    rng = np.random.default_rng(2)
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01      # no ties
    x = _channels_last(x - x.mean())
    n, c, h, w = shape
    g = _channels_last(rng.standard_normal((n, c, h // 2, w // 2)))
    assert cnnkit.gradcheck(MaxPool2d(2), x, grad_out=g, rtol=1e-6, atol=1e-8)
    assert spy["max_pool_2x2_index"] >= 1 and spy["max_pool_2x2_scatter"] >= 1


def test_parity_with_torch_through_the_compiled_kernels(spy):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = _channels_last(np.round(rng.standard_normal((3, 8, 10, 12)), 0).astype(np.float32))  # ties
    layer = MaxPool2d(2)
    out = layer(x)
    xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    ot = torch.nn.functional.max_pool2d(xt, 2)
    np.testing.assert_array_equal(out, ot.detach().numpy())
    g = rng.standard_normal(out.shape).astype(np.float32)
    ot.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(layer.backward(g), xt.grad.numpy())
    assert spy["max_pool_2x2_index"] == 1 and spy["max_pool_2x2_scatter"] == 1


@pytest.mark.parametrize("training", [True, False])
def test_conv_relu_pool_stack_is_bit_equal_on_both_paths(training, spy):
    """The one-pass conv/ReLU/pool (fused ReLU folded into the pool's index) and the layer
    by layer run give the same bits with and without the compiled kernels."""
    rng = np.random.default_rng(5)
    cnnkit.manual_seed(0)
    model = Sequential(Conv2d(3, 8, 3, padding=1), ReLU(), MaxPool2d(2)).train(training)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    g = rng.standard_normal((4, 8, 6, 6)).astype(np.float32)

    def run():
        model.zero_grad()
        if not training:
            with cnnkit.no_grad():
                return (model(x).copy(),)
        out = model(x).copy()
        gx = model.backward(g).copy()
        return out, gx, model[0].weight.grad.numpy().copy(), model[0].bias.grad.numpy().copy()

    compiled, reference = _both_paths(run)
    for a, b in zip(compiled, reference):
        np.testing.assert_array_equal(a, b)
    assert spy.get("max_pool_2x2_index" if training else "max_pool_2x2", 0) >= 1


def test_strided_inputs_stay_on_numpy(spy):
    x = np.random.default_rng(6).standard_normal((2, 3, 6, 6)).astype(np.float32)   # NCHW memory
    MaxPool2d(2)(x)
    assert spy == {}


@pytest.fixture
def avg_spy(monkeypatch):
    """Compiled kernels on; counts the calls of the compiled average-pooling kernels."""
    _jit.set_enabled(True)
    yield count_calls(monkeypatch, _jit_pool, "avg_pool_2x2", "avg_pool_2x2_scatter")
    _jit.set_enabled(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_avg_pool_forward_and_scatter_equal_numpy_bits(shape, dtype, avg_spy):
    rng = np.random.default_rng(7)
    x = _inputs(rng, shape, dtype).transpose(0, 3, 1, 2)          # NCHW view of NHWC memory
    n, h, w, c = shape
    g = rng.standard_normal((n, h // 2, w // 2, c)).astype(dtype).transpose(0, 3, 1, 2)

    def run():
        out, cache = P.avg_pool2d_forward(x, 2)
        return out.copy(), P.avg_pool2d_backward(g, cache).copy()

    (out, gx), (ref_out, ref_gx) = _both_paths(run)
    np.testing.assert_array_equal(out, ref_out)        # NaN in the same places too
    np.testing.assert_array_equal(gx, ref_gx)
    assert out.dtype == dtype and gx.dtype == dtype
    assert avg_spy == {"avg_pool_2x2": 1, "avg_pool_2x2_scatter": 1}
    # What the pooling means, in float64 (NaN windows aside).
    ref = x.astype(np.float64)[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_avg_pool_odd_edge_gets_no_gradient(avg_spy):
    rng = np.random.default_rng(8)
    x = _channels_last(rng.standard_normal((2, 3, 9, 7)).astype(np.float32))
    layer = AvgPool2d(2)
    out = layer(x)
    gx = layer.backward(_channels_last(np.ones(out.shape, np.float32)))
    assert avg_spy == {"avg_pool_2x2": 1, "avg_pool_2x2_scatter": 1}
    assert not gx[:, :, 8].any() and not gx[:, :, :, 6].any()
    np.testing.assert_array_equal(gx[:, :, :8, :6], 0.25)


def test_avg_pool_gradcheck_float64_through_the_compiled_kernels(avg_spy):
    rng = np.random.default_rng(9)
    x = _channels_last(rng.standard_normal((2, 3, 6, 9)))
    g = _channels_last(rng.standard_normal((2, 3, 3, 4)))
    assert cnnkit.gradcheck(AvgPool2d(2), x, grad_out=g, rtol=1e-6, atol=1e-8)
    assert avg_spy["avg_pool_2x2"] >= 1 and avg_spy["avg_pool_2x2_scatter"] >= 1


def test_avg_pool_parity_with_torch_through_the_compiled_kernels(avg_spy):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x = _channels_last(rng.standard_normal((3, 20, 13, 13)).astype(np.float32))
    layer = AvgPool2d(2)
    out = layer(x)
    xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    ot = torch.nn.functional.avg_pool2d(xt, 2)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-6, atol=1e-6)
    g = _channels_last(rng.standard_normal(out.shape).astype(np.float32))
    ot.backward(torch.from_numpy(np.ascontiguousarray(g)))
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert avg_spy == {"avg_pool_2x2": 1, "avg_pool_2x2_scatter": 1}
