"""MaxPool2d, AvgPool2d, AdaptiveAvgPool2d: gradient checks, PyTorch parity, errors."""

import numpy as np
import pytest

import cnnkit

from cnnkit.nn import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

POOL_CONFIGS = [
    ("k2", dict(kernel_size=2), (2, 3, 6, 8)),
    ("k2_odd_floor", dict(kernel_size=2), (2, 2, 7, 5)),
    ("k2_odd_ceil", dict(kernel_size=2, ceil_mode=True), (2, 2, 7, 5)),
    ("k3_s2", dict(kernel_size=3, stride=2), (1, 2, 9, 8)),
    ("k3_s2_pad1", dict(kernel_size=3, stride=2, padding=1), (2, 2, 7, 6)),
    ("k3_s2_pad1_ceil", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 2, 8, 6)),
    ("k3_s1_pad1", dict(kernel_size=3, stride=1, padding=1), (1, 2, 5, 5)),
    ("nonsquare", dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)), (2, 2, 7, 5)),
    ("k3_s3_ceil_edge", dict(kernel_size=3, stride=3, ceil_mode=True), (1, 2, 7, 8)),
    ("k2_s3", dict(kernel_size=2, stride=3), (1, 2, 8, 8)),
]
AVG_EXTRA = [
    ("k3_s2_pad1_nopad", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 2, 7, 6)),
    ("k3_s2_pad1_ceil_nopad", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                   count_include_pad=False), (2, 2, 8, 6)),
    ("k2_pad1_ceil", dict(kernel_size=2, padding=1, ceil_mode=True), (1, 2, 6, 5)),
]
ADAPTIVE = [(1, (2, 3, 5, 7)), ((2, 3), (2, 2, 6, 9)), (3, (1, 2, 7, 5)), ((4, None), (1, 2, 10, 3)),
            ((5, 2), (1, 2, 5, 4)), (4, (1, 1, 3, 3))]


def distinct_input(rng, shape, dtype=np.float64):
    """Values spaced >= 0.01 apart so that no max-pool window has a tie (finite
    differences of 1e-6 never change the winner)."""
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01
    return (x - x.mean()).astype(dtype)


def check_grad(layer, x, rng):
    # Central differences in float64 with a random read-only upstream gradient.
    assert cnnkit.gradcheck(layer, x, seed=int(rng.integers(1000)), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,kwargs,shape", POOL_CONFIGS, ids=[c[0] for c in POOL_CONFIGS])
def test_maxpool_gradcheck_float64(name, kwargs, shape):
    rng = np.random.default_rng(0)
    check_grad(MaxPool2d(**kwargs), distinct_input(rng, shape), rng)


@pytest.mark.parametrize("name,kwargs,shape", POOL_CONFIGS + AVG_EXTRA, ids=[c[0] for c in POOL_CONFIGS + AVG_EXTRA])
def test_avgpool_gradcheck_float64(name, kwargs, shape):
    rng = np.random.default_rng(1)
    check_grad(AvgPool2d(**kwargs), rng.standard_normal(shape), rng)


@pytest.mark.parametrize("output_size,shape", ADAPTIVE)
def test_adaptive_gradcheck_float64(output_size, shape):
    rng = np.random.default_rng(2)
    check_grad(AdaptiveAvgPool2d(output_size), rng.standard_normal(shape), rng)


def _parity(torch, layer, tlayer, x, rng):
    out = layer(x)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    ot = tlayer(xt)
    assert out.dtype == np.float32 and out.shape == tuple(ot.shape)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-5, atol=1e-6)
    g = rng.standard_normal(out.shape).astype(np.float32)
    g.setflags(write=False)
    gx = layer.backward(g)
    ot.backward(torch.from_numpy(g.copy()))
    assert gx.dtype == np.float32
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs,shape", POOL_CONFIGS, ids=[c[0] for c in POOL_CONFIGS])
def test_maxpool_parity_with_torch(name, kwargs, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    _parity(torch, MaxPool2d(**kwargs), torch.nn.MaxPool2d(**kwargs), x, rng)


def test_maxpool_ties_route_to_first_element_like_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = np.round(rng.standard_normal((2, 3, 8, 8)), 0).astype(np.float32)  # many ties
    x[0, 0] = 0.0
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):
        _parity(torch, MaxPool2d(**kwargs), torch.nn.MaxPool2d(**kwargs), x, rng)


@pytest.mark.parametrize("name,kwargs,shape", POOL_CONFIGS + AVG_EXTRA, ids=[c[0] for c in POOL_CONFIGS + AVG_EXTRA])
def test_avgpool_parity_with_torch(name, kwargs, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    _parity(torch, AvgPool2d(**kwargs), torch.nn.AvgPool2d(**kwargs), x, rng)


@pytest.mark.parametrize("output_size,shape", ADAPTIVE)
def test_adaptive_parity_with_torch(output_size, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(np.float32)
    _parity(torch, AdaptiveAvgPool2d(output_size), torch.nn.AdaptiveAvgPool2d(output_size), x, rng)


def test_pooling_accepts_channels_last_and_nchw_memory():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for layer in (MaxPool2d(2), AvgPool2d(3, 2, 1), AdaptiveAvgPool2d(1), AdaptiveAvgPool2d((2, 3))):
        np.testing.assert_allclose(layer(x), layer(x_cl), rtol=1e-6, atol=1e-7)  # summation order may differ


def test_maxpool_eval_mode_backward_recomputes_indices():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    g = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
    train_layer, eval_layer = MaxPool2d(2), MaxPool2d(2).eval()
    train_layer(x)
    eval_layer(x)
    np.testing.assert_array_equal(train_layer.backward(g), eval_layer.backward(g))


def test_errors():
    with pytest.raises(ValueError, match=r"MaxPool2d\(kernel_size=\(2, 2\).*expected a 4-D input"):
        MaxPool2d(2)(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"too small for kernel_size"):
        MaxPool2d(5)(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"AvgPool2d: padding should be at most half"):
        AvgPool2d(2, padding=2)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: output_size"):
        AdaptiveAvgPool2d(0)
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward"):
        AvgPool2d(2).backward(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(TypeError, match=r"kernel_size must be an int"):
        MaxPool2d("2")


def test_repr():
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False)"
    assert "count_include_pad=False" in repr(AvgPool2d(3, count_include_pad=False))


def test_pool_geometry_is_remembered_per_arguments_and_still_validates():
    """``pool_geometry`` hands back the same dict for the same (normalised) arguments, a
    different one when any differs, and checks its arguments on every call (a bool kernel
    equals 1 as a dict key, yet must still be refused)."""
    from cnnkit.nn._pool_kernels import pool_geometry
    a = pool_geometry((2, 3, 8, 8), 2, None, 0, False, "max_pool2d")
    assert pool_geometry((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), False, "max_pool2d") is a
    b = pool_geometry((2, 3, 8, 8), 2, None, 0, True, "max_pool2d")
    c = pool_geometry((2, 3, 9, 8), 2, None, 0, False, "max_pool2d")
    assert b is not a and c is not a and c["out_hw"] == (4, 4)
    pool_geometry((2, 3, 8, 8), 1, None, 0, False, "max_pool2d")
    with pytest.raises(TypeError):
        pool_geometry((2, 3, 8, 8), True, None, 0, False, "max_pool2d")
    with pytest.raises(ValueError):
        pool_geometry((2, 3, 8, 8), (0, 2), None, 0, False, "max_pool2d")
