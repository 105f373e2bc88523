"""cnnkit.nn.utils.clip_grad_norm_ / clip_grad_value_: PyTorch's results, in place, errors."""

import math
import subprocess
import sys

import numpy as np
import pytest

import cnnkit
from cnnkit import nn
from cnnkit.nn import Parameter
from cnnkit.nn.utils import clip_grad_norm_, clip_grad_value_

SHAPES = [(4, 3), (5,), (2, 3, 2, 2)]
N_ELEMENTS = sum(math.prod(s) for s in SHAPES)
# float32 tolerance. A p-norm of n elements sums n non-negative terms; in any order the
# rounded sum is within (n - 1) * u of the exact one (u = 2**-24, Higham, "Accuracy and
# Stability of Numerical Algorithms", 4.2), and the powers, roots and the final coefficient
# add a few u more. PyTorch and NumPy both meet that bound, in different orders, so they
# differ by at most twice it.
F32_TOL = 2 * (N_ELEMENTS + 8) * 2.0 ** -24  # ~1e-5
# float64: the same bound with u = 2**-53 (~1e-14) plus room for libm's pow.
F64_TOL = 1e-12
NORM_TYPES = [2.0, 1.0, math.inf, 3.5, 0.5, 0.0, -math.inf]


def _params(dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    for p in params:
        p.grad = (scale * rng.standard_normal(p.data.shape)).astype(dtype)
    return params


def _torch_twins(torch, params):
    twins = []
    for p in params:
        t = torch.tensor(p.data.copy(), requires_grad=True)
        t.grad = None if p.grad is None else torch.tensor(np.asarray(p.grad).copy())
        twins.append(t)
    return twins


def _check_against_torch(torch, params, max_norm, norm_type, tol, **kw):
    twins = _torch_twins(torch, params)
    total = clip_grad_norm_(params, max_norm, norm_type, **kw)
    ttotal = torch.nn.utils.clip_grad_norm_(twins, max_norm, norm_type, **kw)
    assert isinstance(total, cnnkit.Tensor) and total.shape == ()
    assert total.dtype == params[0].data.dtype
    np.testing.assert_allclose(total.item(), ttotal.item(), rtol=tol, atol=0)
    for p, t in zip(params, twins):
        if t.grad is None:
            assert p.grad is None
        else:
            assert np.asarray(p.grad).dtype == params[0].data.dtype
            np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=tol, atol=tol)
    return total


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype, tol", [(np.float32, F32_TOL), (np.float64, F64_TOL)], ids=["f32", "f64"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "keeps"])
def test_clip_grad_norm_matches_torch(dtype, tol, norm_type, max_norm):
    torch = pytest.importorskip("torch")
    params = _params(dtype)
    before = [np.asarray(p.grad).copy() for p in params]
    grads = [p.grad for p in params]
    total = _check_against_torch(torch, params, max_norm, norm_type, tol)
    for p, g in zip(params, grads):
        assert p.grad is g  # scaled in place, the same gradient Tensor
    if max_norm / (total.item() + 1e-6) >= 1:
        for p, b in zip(params, before):
            np.testing.assert_array_equal(np.asarray(p.grad), b)  # not clipped: untouched


@pytest.mark.parametrize("dtype, tol", [(np.float32, F32_TOL), (np.float64, F64_TOL)], ids=["f32", "f64"])
def test_clipped_gradients_have_max_norm(dtype, tol):
    params = _params(dtype, scale=10.0)
    before = [np.asarray(p.grad).copy() for p in params]
    total = clip_grad_norm_(params, max_norm=2.0)
    exact = math.sqrt(sum(float(np.sum(b.astype(np.float64) ** 2)) for b in before))
    np.testing.assert_allclose(total.item(), exact, rtol=tol)
    after = math.sqrt(sum(float(np.sum(np.asarray(p.grad).astype(np.float64) ** 2)) for p in params))
    np.testing.assert_allclose(after, 2.0 * exact / (exact + 1e-6), rtol=tol)


def test_string_inf_norm_type_and_single_tensor():
    torch = pytest.importorskip("torch")
    p = _params(np.float32)[0]
    t = _torch_twins(torch, [p])[0]
    total = clip_grad_norm_(p, 0.1, norm_type="inf")
    ttotal = torch.nn.utils.clip_grad_norm_(t, 0.1, norm_type="inf")
    assert total.item() == pytest.approx(ttotal.item(), rel=F32_TOL)
    np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=F32_TOL, atol=F32_TOL)


def test_none_grads_are_skipped_and_a_generator_works():
    torch = pytest.importorskip("torch")
    params = _params(np.float32)
    params[1].grad = None
    twins = _torch_twins(torch, params)
    total = clip_grad_norm_((p for p in params), 0.5)
    ttotal = torch.nn.utils.clip_grad_norm_((t for t in twins), 0.5)
    assert params[1].grad is None
    np.testing.assert_allclose(total.item(), ttotal.item(), rtol=F32_TOL)
    for p, t in zip(params, twins):
        if t.grad is not None:
            np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=F32_TOL, atol=F32_TOL)


def test_no_gradients_give_zero_and_touch_nothing():
    p = Parameter(np.ones(3, np.float32))
    total = clip_grad_norm_([p], 1.0)
    assert total.item() == 0.0 and total.dtype == np.float32 and p.grad is None
    with pytest.warns(UserWarning, match="empty generator"):
        assert clip_grad_norm_((q for q in []), 1.0).item() == 0.0


def test_after_loss_backward_matches_torch():
    """The gradients a real backward pass leaves (Tensors on Parameters) clip like PyTorch's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = rng.standard_normal((8, 3)).astype(np.float32)
    model = nn.Linear(6, 3)
    tmodel = torch.nn.Linear(6, 3)
    with torch.no_grad():
        tmodel.weight.copy_(torch.tensor(model.weight.data))
        tmodel.bias.copy_(torch.tensor(model.bias.data))
    nn.MSELoss()(model(cnnkit.tensor(x)), cnnkit.tensor(y)).backward()
    torch.nn.MSELoss()(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
    total = nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    ttotal = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.1)
    assert ttotal.item() > 0.1  # the case that clips
    # The gradients themselves come from a float32 GEMM over the batch of 8 (a few u each).
    np.testing.assert_allclose(total.item(), ttotal.item(), rtol=F32_TOL)
    for p, t in zip(model.parameters(), tmodel.parameters()):
        np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=F32_TOL, atol=F32_TOL)


# ---------------------------------------------------------------------------------- non-finite
def test_nan_gradient_is_reported_not_hidden():
    torch = pytest.importorskip("torch")
    params = _params(np.float32)
    np.asarray(params[0].grad)[0, 0] = np.nan
    twins = _torch_twins(torch, params)
    total = clip_grad_norm_(params, 1.0)
    torch.nn.utils.clip_grad_norm_(twins, 1.0)
    assert math.isnan(total.item())
    for p, t in zip(params, twins):  # PyTorch scales by the NaN coefficient: every gradient NaN
        assert np.isnan(np.asarray(p.grad)).all() and t.grad.isnan().all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_if_nonfinite(bad):
    params = _params(np.float32)
    np.asarray(params[2].grad)[1, 0, 0, 0] = bad
    before = [np.asarray(p.grad).copy() for p in params]
    with pytest.raises(RuntimeError, match="clip_grad_norm_: the total norm of order 2.0 .* is non-finite") as info:
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert "\n" not in str(info.value)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(np.asarray(p.grad), b)  # nothing scaled


# ---------------------------------------------------------------------------------- clip by value
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_value_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    params = _params(dtype)
    params[1].grad = None
    np.asarray(params[0].grad)[0, 1] = np.nan
    twins = _torch_twins(torch, params)
    grads = [p.grad for p in params]
    assert clip_grad_value_(params, 0.7) is None
    torch.nn.utils.clip_grad_value_(twins, 0.7)
    for p, g, t in zip(params, grads, twins):
        assert p.grad is g
        if t.grad is not None:
            assert np.asarray(p.grad).dtype == dtype
            # Clamping only selects values: bit-equal, NaN kept.
            np.testing.assert_array_equal(np.asarray(p.grad), t.grad.numpy())
    assert np.isnan(np.asarray(params[0].grad)[0, 1])
    assert np.abs(np.nan_to_num(np.asarray(params[2].grad))).max() == pytest.approx(0.7)


def test_clip_grad_value_single_tensor():
    p = Parameter(np.zeros(4, np.float32))
    p.grad = np.array([-3.0, -0.5, 0.25, 9.0], np.float32)
    clip_grad_value_(p, 1)
    np.testing.assert_array_equal(np.asarray(p.grad), [-1.0, -0.5, 0.25, 1.0])


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, message", [
    (lambda p: clip_grad_norm_(p, "big"), "clip_grad_norm_: max_norm must be a number, got 'big'"),
    (lambda p: clip_grad_norm_(p, 1.0, norm_type="fro"), "clip_grad_norm_: norm_type must be a number, got 'fro'"),
    (lambda p: clip_grad_norm_(np.ones(3), 1.0), "clip_grad_norm_: parameters must be a Tensor or an iterable of "
                                                 "Tensors, got ndarray"),
    (lambda p: clip_grad_norm_([p, np.ones(3)], 1.0), r"clip_grad_norm_: parameters\[1\] must be a Tensor"),
    (lambda p: clip_grad_value_(p, None), "clip_grad_value_: clip_value must be a number, got None"),
    (lambda p: clip_grad_value_(3.0, 1.0), "clip_grad_value_: parameters must be a Tensor or an iterable"),
])
def test_bad_arguments_are_one_line_errors(call, message):
    p = _params(np.float32)[0]
    with pytest.raises(TypeError, match=message) as info:
        call(p)
    assert "\n" not in str(info.value)


def test_reachable_as_cnnkit_nn_utils_in_a_fresh_interpreter():
    # nn.utils is reached as an attribute before anything imports it: the lazy submodule entry.
    code = ("import cnnkit.nn as nn; f, g = nn.utils.clip_grad_norm_, nn.utils.clip_grad_value_; "
            "import cnnkit.nn.utils.clip_grad as m; "
            "assert f is m.clip_grad_norm_ and g is m.clip_grad_value_ and 'utils' in dir(nn)")
    subprocess.run([sys.executable, "-c", code], check=True)
