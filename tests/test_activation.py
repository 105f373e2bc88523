"""Activations and (log-)softmax: gradients, PyTorch parity, dtype, stability, errors."""

import warnings

import numpy as np
import pytest

from cnnkit.gradient_check import gradcheck
from cnnkit.nn import LeakyReLU, LogSoftmax, ReLU, ReLU6, Sigmoid, Softmax, Tanh

RTOL, ATOL = 1e-4, 1e-5


def _away_from_kinks(shape, kinks=(0.0,), seed=0, scale=4.0):
    """Random values at least 0.05 from every kink, where a finite difference is meaningless."""
    x = np.random.default_rng(seed).uniform(-scale, scale + 4, size=shape)
    for k in kinks:
        close = np.abs(x - k) < 0.05
        x[close] = k + 0.1
    return x


# (name, our factory, torch factory name + args, kinks to avoid)
CASES = [
    ("relu", lambda: ReLU(), ("ReLU", ()), (0.0,)),
    ("relu6", lambda: ReLU6(), ("ReLU6", ()), (0.0, 6.0)),
    ("leaky_relu", lambda: LeakyReLU(), ("LeakyReLU", ()), (0.0,)),
    ("leaky_relu_0.2", lambda: LeakyReLU(0.2), ("LeakyReLU", (0.2,)), (0.0,)),
    ("sigmoid", lambda: Sigmoid(), ("Sigmoid", ()), ()),
    ("tanh", lambda: Tanh(), ("Tanh", ()), ()),
    ("softmax_dim1", lambda: Softmax(dim=1), ("Softmax", (1,)), ()),
    ("softmax_dim-1", lambda: Softmax(dim=-1), ("Softmax", (-1,)), ()),
    ("log_softmax_dim1", lambda: LogSoftmax(dim=1), ("LogSoftmax", (1,)), ()),
    ("log_softmax_dim-1", lambda: LogSoftmax(dim=-1), ("LogSoftmax", (-1,)), ()),
]
IDS = [c[0] for c in CASES]
SHAPES = [(4, 5), (2, 3, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case, shape):
    _, make, _, kinks = case
    x = _away_from_kinks(shape, kinks) * 0.5 if not kinks else _away_from_kinks(shape, kinks)
    assert gradcheck(make(), x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_torch(case, shape):
    torch = pytest.importorskip("torch")
    _, make, (tname, targs), kinks = case
    x = _away_from_kinks(shape, kinks, seed=1).astype(np.float32)
    g = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn, tname)(*targs)(xt)
    yt.backward(torch.from_numpy(g))
    layer = make()
    y = layer(x)
    gx = layer.backward(g)
    assert y.dtype == np.float32 and gx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_stays_float64_and_grad_out_untouched(case):
    layer = case[1]()
    x = _away_from_kinks((3, 4), case[3])
    assert layer(x).dtype == np.float64
    g = np.ones((3, 4))
    g.flags.writeable = False
    assert layer.backward(g).dtype == np.float64


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_before_forward_and_needs_input_grad(case):
    layer = case[1]()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((2, 2)))
    layer(np.ones((2, 2), np.float32))
    layer.needs_input_grad = False
    assert layer.backward(np.ones((2, 2), np.float32)) is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_integer_input_is_a_clear_error(case):
    with pytest.raises(TypeError, match="floating.*int"):
        case[1]()(np.ones((2, 2), np.int32))


def test_extreme_values_are_stable():
    x = np.array([[-1e4, 0.0, 1e4], [-100.0, 50.0, 88.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        s = Softmax(1)(x)
        ls = LogSoftmax(1)(x)
        sg = Sigmoid()(x)
    for arr in (s, ls, sg):
        assert np.all(np.isfinite(arr)) and arr.dtype == np.float32
    np.testing.assert_allclose(s.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(ls[0], [-2e4, -1e4, 0], rtol=1e-6)
    np.testing.assert_array_equal(sg[0], [0, 0.5, 1])


def test_softmax_dim_out_of_range():
    with pytest.raises(ValueError, match=r"Softmax\(dim=2\): dim 2 is out of range.*\(3, 4\)"):
        Softmax(2)(np.ones((3, 4), np.float32))


def test_reprs():
    assert repr(LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(Softmax(dim=1)) == "Softmax(dim=1)"
    assert repr(ReLU()) == "ReLU()"
