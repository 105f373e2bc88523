"""Adadelta and Adagrad: parity with PyTorch's update rules, state dicts, dtypes, errors."""

import numpy as np
import pytest

import cnnkit.optim as optim
from cnnkit.nn import Parameter
import test_optim
from test_optim import _grads, _ids, _make_params

STEPS = 8
# float32 tolerance. Each step rounds every element about a dozen times per side (unit
# roundoff u = 2**-24), and PyTorch orders the operations differently, so the two sides
# may differ by up to ~2 * 12 * u relative per step. The differences carry forward at most
# additively: the running averages are convex combinations (0 <= rho <= 1) and Adagrad's sum only
# grows, so neither amplifies an earlier error. The values compared are of order 1 (random
# normal parameters and gradients), so the same bound serves as the absolute tolerance for
# elements that happen to be near zero (e.g. after weight decay cancels the gradient).
F32_TOL = 2 * 12 * STEPS * 2.0 ** -24  # ~1.1e-5
# float64: the same count of roundings with u = 2**-53 is ~1e-14; 1e-12 leaves room for libm's
# square roots, while a formula difference (a misplaced eps, lr_decay one step off) moves these
# configurations' results by far more.
F64_TOL = 1e-12

# (optimizer name, keyword arguments) — the same keywords are passed to torch.optim.
CONFIGS = [
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.7)),
    ("Adadelta", dict(lr=2.0, rho=0.95, eps=1e-4, weight_decay=0.1)),
    ("Adadelta", dict(rho=0.8, weight_decay=0.05, maximize=True)),
    ("Adadelta", dict(lr=0.3, maximize=True)),
    ("Adadelta", dict(rho=0.0)),
    ("Adadelta", dict(rho=1.0, eps=1e-3)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, eps=1e-6)),
    ("Adagrad", dict(lr=0.05, weight_decay=0.1, lr_decay=0.01)),
    ("Adagrad", dict(lr=0.05, maximize=True)),
    ("Adagrad", dict(lr=0.2, lr_decay=0.1, weight_decay=0.2, initial_accumulator_value=0.1, maximize=True)),
]
NAMES = ["Adadelta", "Adagrad"]


def _torch_pair(torch, params):
    return [torch.tensor(p.data.copy(), requires_grad=True) for p in params]


def _step_both(torch, opt, topt, params, tparams, steps, dtype, start=0):
    """Give both optimizers the same gradients and step them; yields after each step."""
    for t in range(start, start + steps):
        for p, tp, g in zip(params, tparams, _grads(t, dtype)):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        yield t


def _assert_state_matches(opt, topt, rtol, atol):
    """The per-parameter buffers agree too, under PyTorch's names."""
    ours, theirs = opt.state_dict()["state"], topt.state_dict()["state"]
    assert sorted(ours) == sorted(theirs)
    for i in theirs:
        assert set(ours[i]) == set(theirs[i])
        for k, v in theirs[i].items():
            if k == "step":
                assert ours[i][k] == int(v)
            else:
                assert ours[i][k].dtype == opt.param_groups[0]["params"][0].data.dtype
                np.testing.assert_allclose(ours[i][k], v.numpy(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype, tol", [(np.float32, F32_TOL), (np.float64, F64_TOL)], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_matches_torch(cfg, dtype, tol):
    torch = pytest.importorskip("torch")
    name, kw = cfg
    params = _make_params(dtype=dtype)
    tparams = _torch_pair(torch, params)
    opt = getattr(optim, name)(params, **kw)
    topt = getattr(torch.optim, name)(tparams, **kw)
    for _ in _step_both(torch, opt, topt, params, tparams, STEPS, dtype):
        for p, tp in zip(params, tparams):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=tol, atol=tol)
    _assert_state_matches(opt, topt, tol, tol)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_with_their_own_options_match_torch(name):
    torch = pytest.importorskip("torch")
    params = _make_params(dtype=np.float64)
    tparams = _torch_pair(torch, params)
    own = {"Adadelta": dict(lr=0.5, rho=0.6, weight_decay=0.1),
           "Adagrad": dict(lr=0.5, lr_decay=0.2, weight_decay=0.1)}[name]
    opt = getattr(optim, name)([{"params": params[:2]}, {"params": params[2:], **own}], lr=0.05)
    topt = getattr(torch.optim, name)([{"params": tparams[:2]}, {"params": tparams[2:], **own}], lr=0.05)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.5]
    for _ in _step_both(torch, opt, topt, params, tparams, 5, np.float64):
        pass
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=F64_TOL, atol=F64_TOL)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    p = [Parameter(np.zeros(2, np.float32))]
    tp = [torch.zeros(2, requires_grad=True)]
    for name in NAMES:
        ours = getattr(optim, name)(p).defaults
        theirs = getattr(torch.optim, name)(tp).defaults
        assert set(ours) <= set(theirs), name
        for k, v in ours.items():
            assert theirs[k] == v, (name, k)


def test_adagrad_by_hand():
    """Two steps worked out on paper: s = 0.5 + 4 = 4.5, then 4.5 + 1 = 5.5; clr = lr / (1 + lr_decay)."""
    p = Parameter(np.array([1.0], np.float64))
    opt = optim.Adagrad([p], lr=0.3, lr_decay=0.5, initial_accumulator_value=0.5, eps=0.0)
    p.grad = np.array([2.0])
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.3 * 2.0 / np.sqrt(4.5)], rtol=1e-15)
    p.grad = np.array([-1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.3 * 2.0 / np.sqrt(4.5) + 0.2 * 1.0 / np.sqrt(5.5)], rtol=1e-15)


def test_adadelta_by_hand():
    """One step on paper with rho = 0.5, eps = 0.01: v = 0.5 * 4 = 2, delta = sqrt(0.01) / sqrt(2.01) * 2,
    u = 0.5 * delta**2."""
    p = Parameter(np.array([1.0], np.float64))
    opt = optim.Adadelta([p], lr=0.5, rho=0.5, eps=0.01)
    p.grad = np.array([2.0])
    opt.step()
    delta = 0.1 / np.sqrt(2.01) * 2.0
    np.testing.assert_allclose(p.data, [1.0 - 0.5 * delta], rtol=1e-15)
    np.testing.assert_allclose(opt.state[p]["square_avg"], [2.0], rtol=1e-15)
    np.testing.assert_allclose(opt.state[p]["acc_delta"], [0.5 * delta ** 2], rtol=1e-15)


# ---------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_step_does_not_touch_grad_and_keeps_float32(cfg):
    test_optim.test_step_does_not_touch_grad_and_keeps_dtype(cfg)


@pytest.mark.parametrize("name", NAMES)
def test_frozen_and_gradless_params_are_not_updated(name):
    frozen = Parameter(np.ones((2, 2), np.float32), requires_grad=False)
    frozen.grad = np.ones((2, 2), np.float32)  # a stale gradient must still be ignored
    no_grad = Parameter(np.ones(3, np.float32))
    live = Parameter(np.ones(3, np.float32))
    opt = getattr(optim, name)([frozen, no_grad, live], lr=0.1, weight_decay=0.1)
    live.grad = np.full(3, 0.5, np.float32)
    for _ in range(3):
        opt.step()
    np.testing.assert_array_equal(frozen.data, np.ones((2, 2)))
    np.testing.assert_array_equal(no_grad.data, np.ones(3))
    assert np.all(live.data < 1)
    steps = {i: st["step"] for i, st in opt.state_dict()["state"].items()}
    # Adagrad, as PyTorch's, gives every constructor parameter its state up front (step 0).
    assert steps == ({2: 3} if name == "Adadelta" else {0: 0, 1: 0, 2: 3})


def test_adagrad_state_exists_before_the_first_step_like_torch():
    torch = pytest.importorskip("torch")
    params = _make_params()
    opt = optim.Adagrad(params, initial_accumulator_value=0.25)
    topt = torch.optim.Adagrad(_torch_pair(torch, params), initial_accumulator_value=0.25)
    _assert_state_matches(opt, topt, 0, 0)
    # A parameter added later gets its state at its first update, also as in PyTorch.
    extra = Parameter(np.ones(2, np.float32))
    opt.add_param_group({"params": [extra], "initial_accumulator_value": 1.0})
    assert extra not in opt.state
    extra.grad = np.full(2, 3.0, np.float32)
    opt.step()
    np.testing.assert_array_equal(opt.state[extra]["sum"], 10.0)  # 1 + 3**2


# ---------------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
@pytest.mark.parametrize("via_json", [False, True], ids=["dict", "json"])
def test_state_dict_resume_equals_straight_run(cfg, via_json):
    """Save after 3 steps, load into a fresh optimizer, 3 more steps: bit-equal to 6 straight."""
    test_optim.test_state_dict_resume_equals_straight_run(cfg, via_json)


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c[1]], ids=_ids)
def test_torch_state_dict_loads_and_continues_like_torch(cfg):
    """PyTorch's state dict (tensors turned into arrays) loads as is: same layout and names."""
    torch = pytest.importorskip("torch")
    name, kw = cfg
    params = _make_params(dtype=np.float64)
    tparams = _torch_pair(torch, params)
    topt = getattr(torch.optim, name)(tparams, **kw)
    for t in range(3):
        for tp, g in zip(tparams, _grads(t, np.float64)):
            tp.grad = torch.tensor(g)
        topt.step()
    tsd = topt.state_dict()
    ours_keys = set(getattr(optim, name)([Parameter(np.zeros(1))]).defaults)
    sd = {"state": {i: {k: v.numpy() for k, v in st.items()} for i, st in tsd["state"].items()},
          "param_groups": [{k: v for k, v in g.items() if k in ours_keys | {"params"}}
                           for g in tsd["param_groups"]]}
    resumed = [Parameter(tp.detach().numpy().copy()) for tp in tparams]
    opt = getattr(optim, name)(resumed)
    opt.load_state_dict(sd)
    for _ in _step_both(torch, opt, topt, resumed, tparams, 3, np.float64, start=3):
        pass
    for p, tp in zip(resumed, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=F64_TOL, atol=F64_TOL)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name, kw, message", [
    ("Adadelta", dict(lr=-1), "Adadelta: invalid learning rate lr=-1"),
    ("Adadelta", dict(rho=1.5), r"Adadelta: invalid rho=1.5, expected a number in \[0.0, 1.0\]"),
    ("Adadelta", dict(rho=-0.1), "Adadelta: invalid rho=-0.1"),
    ("Adadelta", dict(eps=-1e-6), "Adadelta: invalid eps=-1e-06, expected a number >= 0"),
    ("Adadelta", dict(weight_decay=-0.1), "Adadelta: invalid weight_decay=-0.1"),
    ("Adadelta", dict(rho="0.9"), "Adadelta: invalid rho='0.9'"),
    ("Adagrad", dict(lr=-0.1), "Adagrad: invalid learning rate lr=-0.1"),
    ("Adagrad", dict(lr_decay=-1), "Adagrad: invalid lr_decay=-1, expected a number >= 0"),
    ("Adagrad", dict(weight_decay=-1), "Adagrad: invalid weight_decay=-1"),
    ("Adagrad", dict(initial_accumulator_value=-0.5), "Adagrad: invalid initial_accumulator_value=-0.5"),
    ("Adagrad", dict(eps=-1), "Adagrad: invalid eps=-1"),
])
def test_bad_arguments_name_the_optimizer_and_argument(name, kw, message):
    p = Parameter(np.ones(2, np.float32))
    with pytest.raises(ValueError, match=message) as info:
        getattr(optim, name)([p], **kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_group_option_is_reported(name):
    a, b = Parameter(np.ones(2, np.float32)), Parameter(np.ones(3, np.float32))
    opt = getattr(optim, name)([a])
    with pytest.raises(ValueError, match=f"{name}: invalid weight_decay=-2"):
        opt.add_param_group({"params": [b], "weight_decay": -2})


def test_grad_shape_mismatch_is_reported():
    p = Parameter(np.ones(3, np.float32))
    p.grad = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"Adagrad: gradient shape \(4,\) does not match parameter shape \(3,\)"):
        optim.Adagrad([p]).step()


# ---------------------------------------------------------------------------------- slicing
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_in_slices_and_odd_layouts_match_torch(cfg, monkeypatch):
    """The update runs slice by slice (CHUNK_ELEMENTS): with tiny slices (several per
    parameter, the last one short), Fortran-ordered gradients and a parameter whose .data
    was replaced by a transposed (non-contiguous) array, it still matches PyTorch."""
    torch = pytest.importorskip("torch")
    import cnnkit.optim._slices as slices_module
    monkeypatch.setattr(slices_module, "CHUNK_ELEMENTS", 5)
    name, kw = cfg
    params = _make_params(dtype=np.float64)
    params[0].data = np.ascontiguousarray(params[0].data.T).T  # same values, Fortran order
    tparams = _torch_pair(torch, params)
    opt = getattr(optim, name)(params, **kw)
    topt = getattr(torch.optim, name)(tparams, **kw)
    for t in range(4):
        for p, tp, g in zip(params, tparams, _grads(t, np.float64)):
            p.grad = np.asfortranarray(g)
            tp.grad = torch.tensor(g)
        kept = [np.asarray(p.grad).copy() for p in params]
        opt.step()
        topt.step()
        for p, tp, k in zip(params, tparams, kept):
            np.testing.assert_array_equal(np.asarray(p.grad), k)  # the gradient is never written
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=F64_TOL, atol=F64_TOL)
    assert not params[0].data.flags.c_contiguous  # the whole-array path was taken for it
    _assert_state_matches(opt, topt, F64_TOL, F64_TOL)


def test_update_slices_cover_every_element_once(monkeypatch):
    import cnnkit.optim._slices as slices_module
    monkeypatch.setattr(slices_module, "CHUNK_ELEMENTS", 7)
    p = Parameter(np.zeros((4, 6), np.float32))
    opt = optim.Adagrad([p])
    grad = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(4, 6))
    sizes = []
    for g, data, t0, t1 in slices_module.update_slices(opt, p, grad, p.data):
        assert t0.shape == t1.shape == data.shape == g.shape
        data += g + 1  # written through the views
        sizes.append(data.size)
    assert sizes == [7, 7, 7, 3]
    np.testing.assert_array_equal(p.data, grad + 1)
