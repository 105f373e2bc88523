"""nn.init: gains and fans as torch.nn.init, distributions, generators, in-place fills, errors."""

import math

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import Parameter, init

SHAPES = [(64, 32), (32, 16, 3, 3), (8, 4, 5)]


@pytest.mark.parametrize("nonlinearity,param", [("linear", None), ("conv2d", None), ("sigmoid", None),
                                                ("tanh", None), ("relu", None), ("leaky_relu", None),
                                                ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)), ("selu", None)])
def test_calculate_gain_matches_torch(nonlinearity, param):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity, param))


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_match_torch(shape):
    torch = pytest.importorskip("torch")
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init.calculate_fan_in_and_fan_out(np.empty(shape, np.float32)) == expected


def _torch_bound_and_std(torch, name, shape, **kwargs):
    """Draw a large sample with torch's initializer to read off its range and spread."""
    t = torch.empty(shape)
    getattr(torch.nn.init, name)(t, **kwargs)
    return float(t.abs().max()), float(t.std())


@pytest.mark.parametrize("shape", [(256, 128, 3, 3)])
@pytest.mark.parametrize("name,kwargs", [
    ("kaiming_uniform_", dict(a=math.sqrt(5))),
    ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu")),
    ("kaiming_normal_", dict(mode="fan_out", nonlinearity="relu")),
    ("kaiming_normal_", dict()),
    ("xavier_uniform_", dict(gain=2.0)),
    ("xavier_normal_", dict()),
])
def test_distributions_match_torch(name, kwargs, shape):
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(0)
    w = np.empty(shape, np.float32)
    out = getattr(init, name)(w, **kwargs)
    assert out is w and w.dtype == np.float32
    t_max, t_std = _torch_bound_and_std(torch, name, shape, **kwargs)
    # 295k samples: the sample std is within ~0.3% of the true value for either library
    assert abs(w.std() - t_std) < 0.01 * t_std
    if "uniform" in name:
        assert abs(np.abs(w).max() - t_max) < 0.01 * t_max
    assert abs(w.mean()) < 0.01 * t_std


def test_exact_formulas_on_uniform_bounds():
    w = np.empty((100, 50), np.float64)
    init.kaiming_uniform_(w, a=math.sqrt(5))
    assert np.abs(w).max() <= 1 / math.sqrt(50)
    init.xavier_uniform_(w)
    assert np.abs(w).max() <= math.sqrt(6 / 150)
    init.uniform_(w, -0.5, 2.0)
    assert w.min() >= -0.5 and w.max() < 2.0


def test_parameter_filled_in_place_and_simple_fills():
    p = Parameter(np.empty((3, 4), np.float32))
    data = p.data
    assert init.normal_(p, mean=5.0, std=0.0) is p
    assert p.data is data
    np.testing.assert_array_equal(p.data, 5.0)
    init.zeros_(p)
    np.testing.assert_array_equal(p.data, 0)
    init.ones_(p)
    np.testing.assert_array_equal(p.data, 1)
    init.constant_(p, 0.25)
    np.testing.assert_array_equal(p.data, 0.25)


def test_generator_and_global_seed_reproducible():
    a = init.kaiming_normal_(np.empty((8, 8)), generator=np.random.default_rng(1))
    b = init.kaiming_normal_(np.empty((8, 8)), generator=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    cnnkit.manual_seed(4)
    c = init.xavier_uniform_(np.empty((8, 8), np.float32))
    cnnkit.manual_seed(4)
    d = init.xavier_uniform_(np.empty((8, 8), np.float64))
    np.testing.assert_array_equal(c, d.astype(np.float32))  # same draws whatever the dtype


def test_errors():
    with pytest.raises(ValueError, match="fewer than 2 dimensions.*\\(5,\\)"):
        init.xavier_uniform_(np.empty(5))
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        init.kaiming_uniform_(np.empty((3, 3)), mode="fan")
    with pytest.raises(ValueError, match="unsupported nonlinearity 'gelu2'"):
        init.calculate_gain("gelu2")
    with pytest.raises(TypeError, match="init.normal_: expected a Tensor, a Parameter or numpy.ndarray, got list"):
        init.normal_([1.0, 2.0])
    with pytest.raises(TypeError, match="init.zeros_: expected a floating array, got dtype int64"):
        init.zeros_(np.zeros(3, np.int64))
