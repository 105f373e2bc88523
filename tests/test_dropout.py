"""Dropout: mask statistics, scaling, eval identity, reproducibility, gradients, PyTorch semantics."""

import numpy as np
import pytest

import cnnkit
from cnnkit.gradient_check import gradcheck
from cnnkit.nn import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics_and_scaling(p):
    cnnkit.manual_seed(0)
    x = np.ones((200, 500), np.float32)
    y = Dropout(p)(x)
    assert y.dtype == np.float32
    zero_fraction = np.mean(y == 0)
    # 100000 Bernoulli draws: the standard error of the fraction is < 0.0016
    assert abs(zero_fraction - p) < 0.01
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-6)
    assert abs(y.mean() - 1) < 0.03  # inverted dropout keeps the expectation


def test_backward_uses_the_forward_mask():
    cnnkit.manual_seed(1)
    layer = Dropout(0.4)
    x = np.random.default_rng(0).standard_normal((6, 7)).astype(np.float32)
    y = layer(x)
    g = np.random.default_rng(1).standard_normal((6, 7)).astype(np.float32)
    g.flags.writeable = False
    gx = layer.backward(g)
    np.testing.assert_allclose(gx, g * (y != 0) / 0.6, rtol=1e-6)
    assert gx.dtype == np.float32


def test_eval_is_identity():
    layer = Dropout(0.5).eval()
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(layer(x), x)
    g = np.ones_like(x)
    np.testing.assert_array_equal(layer.backward(g), g)


def test_p_zero_and_one():
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(Dropout(0.0)(x), x)
    layer = Dropout(1.0)
    np.testing.assert_array_equal(layer(x), 0)
    np.testing.assert_array_equal(layer.backward(x), 0)


def test_reproducible_with_manual_seed_and_generator():
    x = np.ones((10, 10), np.float32)
    cnnkit.manual_seed(5)
    a = Dropout(0.5)(x)
    cnnkit.manual_seed(5)
    b = Dropout(0.5)(x)
    np.testing.assert_array_equal(a, b)
    c = Dropout(0.5, generator=np.random.default_rng(3))(x)
    d = Dropout(0.5, generator=np.random.default_rng(3))(x)
    np.testing.assert_array_equal(c, d)
    layer = Dropout(0.5)
    assert not np.array_equal(layer(x), layer(x))  # a fresh mask every call


def test_gradcheck_train_and_eval():
    # gradcheck replays the generator before each forward, so the mask is fixed during the check.
    x = np.random.default_rng(0).standard_normal((4, 6))
    assert gradcheck(Dropout(0.3), x)
    assert gradcheck(Dropout(0.3, generator=np.random.default_rng(1)), x)
    assert gradcheck(Dropout(0.3).eval(), x)


def test_same_semantics_as_torch():
    torch = pytest.importorskip("torch")
    p = 0.3
    x = np.random.default_rng(0).uniform(1, 2, (100, 100)).astype(np.float32)
    torch.manual_seed(0)
    ref = torch.nn.functional.dropout(torch.from_numpy(x), p=p, training=True).numpy()
    cnnkit.manual_seed(0)
    ours = Dropout(p)(x)
    for y in (ref, ours):
        # every element is either dropped or scaled by exactly 1 / (1 - p)
        kept = y != 0
        np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
        assert abs(1 - kept.mean() - p) < 0.02
    assert abs(np.mean(ours == 0) - np.mean(ref == 0)) < 0.03
    # eval mode in both is the identity
    np.testing.assert_array_equal(torch.nn.functional.dropout(torch.from_numpy(x), p, training=False).numpy(),
                                  Dropout(p).eval()(x))


def test_errors_and_repr():
    with pytest.raises(ValueError, match=r"Dropout: p must be a probability in \[0, 1\], got 1.5"):
        Dropout(1.5)
    with pytest.raises(RuntimeError, match="before forward"):
        Dropout().backward(np.ones(3))
    with pytest.raises(TypeError, match="Dropout.*floating"):
        Dropout()(np.ones(3, np.int64))
    assert repr(Dropout(0.2)) == "Dropout(p=0.2)"
    layer = Dropout(0.5)
    layer(np.ones((2, 2), np.float32))
    layer.needs_input_grad = False
    assert layer.backward(np.ones((2, 2), np.float32)) is None


@pytest.mark.parametrize("shape", [(3, 5), (7,), (0, 4), (2, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_odd_and_empty_shapes_and_dtypes(shape, dtype):
    """The mask comes from the generator's raw 64-bit words, two elements per word: odd
    sizes, empty arrays and float64 inputs work; backward multiplies by the same mask."""
    cnnkit.manual_seed(2)
    layer = Dropout(0.25)
    x = np.ones(shape, dtype)
    y = layer(x)
    assert y.shape == shape and y.dtype == dtype
    assert np.all((y == 0) | (y == np.asarray(1 / 0.75, dtype)))
    np.testing.assert_array_equal(layer.backward(np.ones(shape, dtype)), y)


def test_extreme_probabilities_keep_their_rates():
    cnnkit.manual_seed(4)
    x = np.ones((400, 500), np.float32)
    assert np.mean(Dropout(0.01)(x) == 0) == pytest.approx(0.01, abs=0.002)
    assert np.mean(Dropout(0.99)(x) == 0) == pytest.approx(0.99, abs=0.002)
    assert np.all(Dropout(1e-12)(x) != 0)          # p below 2**-33 rounds to "never drop"
