"""cnnkit.no_grad(): inference without keeping forward caches."""

import numpy as np
import pytest
from float32_tolerance import assert_float32_close

import cnnkit
from cnnkit import nn


def _model():
    cnnkit.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 13 * 13, 3))


@pytest.mark.parametrize("with_batch_norm", [False, True])
def test_no_grad_gives_same_output_and_frees_caches(with_batch_norm):
    model = _model().eval()
    if not with_batch_norm:
        model = nn.Sequential(*[m for m in model if not isinstance(m, nn.BatchNorm2d)])
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    expected = model(x)
    with cnnkit.no_grad():
        assert not cnnkit.is_grad_enabled()
        out = model(x)
    assert cnnkit.is_grad_enabled()
    # Without gradients other kernels may run (fused passes; an eval-mode BatchNorm folded
    # into the conv's weight and bias): the same map, its sums taken in another order, equal
    # up to float32 rounding of the conv's 9 and the Linear's 676 products.
    assert_float32_close(out, expected, 9 + 4 * 13 * 13)
    assert all(layer.__dict__.get("_cache") is None for layer in model)
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        model.backward(np.ones_like(out))


def test_no_grad_restores_state_after_exception_and_as_decorator():
    with pytest.raises(ValueError):
        with cnnkit.no_grad():
            raise ValueError("boom")
    assert cnnkit.is_grad_enabled()

    @cnnkit.no_grad()
    def infer():
        return cnnkit.is_grad_enabled()

    assert infer() is False
    assert cnnkit.is_grad_enabled()


def test_backward_works_again_after_no_grad():
    model = _model().train()
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(np.float32)
    with cnnkit.no_grad():
        model(x)
    out = model(x)
    grad_in = model.backward(np.ones_like(out))
    assert grad_in.shape == x.shape and grad_in.dtype == np.float32
