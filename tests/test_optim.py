"""Optimizers: parity with PyTorch's update rules, state_dict round trips, frozen params, errors."""

import json

import numpy as np
import pytest

import cnnkit.optim as optim
from cnnkit.nn import Parameter

SHAPES = [(4, 3), (5,), (2, 3, 2, 2)]

# (optimizer name, keyword arguments) — the same keywords are passed to torch.optim.
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.005, centered=True, momentum=0.7, weight_decay=0.01, maximize=True)),
]


def _ids(cfg):
    name, kw = cfg
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


def _make_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def _grads(step, dtype=np.float32):
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        for p, g in zip(params, _grads(t, params[0].dtype)):
            p.grad = g
        opt.step()


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_matches_torch_float32(cfg):
    torch = pytest.importorskip("torch")
    name, kw = cfg
    params = _make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = getattr(optim, name)(params, **kw)
    topt = getattr(torch.optim, name)(tparams, **kw)
    for t in range(8):
        grads = _grads(t)
        for p, tp, g in zip(params, tparams, grads):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            assert p.data.dtype == np.float32
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    # The per-parameter buffers agree too, under PyTorch's names.
    ours, theirs = opt.state_dict()["state"], topt.state_dict()["state"]
    assert sorted(ours) == sorted(theirs)
    for i in theirs:
        assert set(ours[i]) == {k for k, v in theirs[i].items() if v is not None}
        for k, v in theirs[i].items():
            if k == "step":
                assert ours[i][k] == int(v)
            elif v is not None:
                assert ours[i][k].dtype == np.float32
                np.testing.assert_allclose(ours[i][k], v.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_matches_torch_float64(cfg):
    torch = pytest.importorskip("torch")
    name, kw = cfg
    params = _make_params(dtype=np.float64)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = getattr(optim, name)(params, **kw)
    topt = getattr(torch.optim, name)(tparams, **kw)
    for t in range(5):
        for p, tp, g in zip(params, tparams, _grads(t, np.float64)):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        assert p.data.dtype == np.float64
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_param_groups_with_different_lr_match_torch(name):
    torch = pytest.importorskip("torch")
    params = _make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    extra = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    opt = getattr(optim, name)([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.01, **extra)
    topt = getattr(torch.optim, name)([{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.5}], lr=0.01, **extra)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.5]
    for t in range(5):
        for p, tp, g in zip(params, tparams, _grads(t)):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    p = [Parameter(np.zeros(2, np.float32))]
    tp = [torch.zeros(2, requires_grad=True)]
    for name in ["SGD", "Adam", "AdamW", "RMSprop"]:
        ours = getattr(optim, name)(p).defaults
        theirs = getattr(torch.optim, name)(tp).defaults
        for k, v in ours.items():
            if k in theirs:
                assert theirs[k] == (tuple(v) if isinstance(v, tuple) else v), (name, k)


# ---------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_step_does_not_touch_grad_and_keeps_dtype(cfg):
    name, kw = cfg
    params = _make_params()
    opt = getattr(optim, name)(params, **kw)
    for t in range(3):
        grads = _grads(t)
        for p, g in zip(params, grads):
            p.grad = g.copy()
            p.grad.data.flags.writeable = False  # any write into the gradient raises
        opt.step()
        for p, g in zip(params, grads):
            np.testing.assert_array_equal(p.grad, g)
            assert p.data.dtype == np.float32
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_frozen_and_gradless_params_are_skipped(name):
    frozen = Parameter(np.ones((2, 2), np.float32), requires_grad=False)
    frozen.grad = np.ones((2, 2), np.float32)  # a stale gradient must still be ignored
    no_grad = Parameter(np.ones(3, np.float32))
    live = Parameter(np.ones(3, np.float32))
    extra = {"momentum": 0.9} if name == "SGD" else {}
    opt = getattr(optim, name)([frozen, no_grad, live], lr=0.1, weight_decay=0.1, **extra)
    live.grad = np.full(3, 0.5, np.float32)
    for _ in range(3):
        opt.step()
    np.testing.assert_array_equal(frozen.data, np.ones((2, 2)))
    np.testing.assert_array_equal(no_grad.data, np.ones(3))
    assert np.all(live.data < 1)
    assert frozen not in opt.state and no_grad not in opt.state
    assert list(opt.state_dict()["state"]) == [2]


def test_sgd_plain_update_by_hand():
    p = Parameter(np.array([1.0, -2.0], np.float32))
    opt = optim.SGD([p], lr=0.5, momentum=0.9)
    p.grad = np.array([1.0, 1.0], np.float32)
    opt.step()  # buf = g; p = p - 0.5 * g
    np.testing.assert_allclose(p.data, [0.5, -2.5])
    opt.step()  # buf = 0.9 * g + g = 1.9 g
    np.testing.assert_allclose(p.data, [0.5 - 0.95, -2.5 - 0.95], rtol=1e-6)


def test_adam_minimises_a_quadratic():
    rng = np.random.default_rng(3)
    target = rng.standard_normal(10).astype(np.float32)
    p = Parameter(np.zeros(10, np.float32))
    opt = optim.Adam([p], lr=0.05)
    for _ in range(500):
        p.grad = p.data - target
        opt.step()
    np.testing.assert_allclose(p.data, target, atol=1e-3)


def test_zero_grad():
    params = _make_params()
    opt = optim.SGD(params, lr=0.1)
    for p, g in zip(params, _grads(0)):
        p.grad = g
    opt.zero_grad(set_to_none=False)
    assert all(np.all(p.grad == 0) for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_named_parameters_and_add_param_group():
    a, b = Parameter(np.ones(2, np.float32)), Parameter(np.ones(3, np.float32))
    opt = optim.SGD([("layer.weight", a)], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["layer.weight"]
    opt.add_param_group({"params": b, "lr": 1.0})
    assert opt.param_groups[1]["momentum"] == 0 and opt.param_groups[1]["lr"] == 1.0
    a.grad = np.ones(2, np.float32)
    b.grad = np.ones(3, np.float32)
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.0)


def test_works_with_a_module():
    from cnnkit.nn import Module

    class Tiny(Module):
        def __init__(self):
            super().__init__()
            self.weight = Parameter(np.ones((2, 2), np.float32))
            self.bias = Parameter(np.zeros(2, np.float32))

    m = Tiny()
    opt = optim.Adam(m.parameters(), lr=0.1)
    for p in m.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    np.testing.assert_allclose(m.weight.data, 0.9, rtol=1e-6)


# ---------------------------------------------------------------------------------- state dicts
def _json_round_trip(sd):
    """What a checkpoint would store: arrays as lists, int keys as strings, tuples as lists."""
    as_json = json.dumps(sd, default=lambda a: a.tolist())
    back = json.loads(as_json)
    for st in back["state"].values():
        for k, v in st.items():
            if isinstance(v, list):
                st[k] = np.asarray(v, dtype=np.float32)
    return back


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
@pytest.mark.parametrize("via_json", [False, True], ids=["dict", "json"])
def test_state_dict_resume_equals_straight_run(cfg, via_json):
    name, kw = cfg
    straight = _make_params()
    opt = getattr(optim, name)(straight, **kw)
    _run(opt, straight, 6)

    first = _make_params()
    opt1 = getattr(optim, name)(first, **kw)
    _run(opt1, first, 3)
    sd = opt1.state_dict()
    weights = [p.data.copy() for p in first]
    _run(opt1, first, 2, start=100)  # later steps must not change the saved state dict
    if via_json:
        sd = _json_round_trip(sd)

    resumed = [Parameter(w) for w in weights]
    opt2 = getattr(optim, name)(resumed, lr=123.0)  # hyperparameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == kw.get("lr", opt.defaults["lr"])
    _run(opt2, resumed, 3, start=3)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_layout_is_pytorchs():
    params = _make_params()
    opt = optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], amsgrad=True)
    _run(opt, params, 2)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2]]
    assert sd["param_groups"][1]["lr"] == 0.1
    assert set(sd["state"]) == {0, 1, 2}
    assert set(sd["state"][1]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][1]["step"] == 2
    json.dumps(sd["param_groups"])  # hyperparameters are JSON-able


def test_load_torch_optimizer_state():
    torch = pytest.importorskip("torch")
    params = _make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    topt = torch.optim.SGD(tparams, lr=0.05, momentum=0.9)
    for t in range(3):
        for tp, g in zip(tparams, _grads(t)):
            tp.grad = torch.tensor(g)
        topt.step()
    tsd = topt.state_dict()
    sd = {"state": {i: {k: v.numpy() for k, v in st.items()} for i, st in tsd["state"].items()},
          "param_groups": [{k: v for k, v in g.items() if k in ("lr", "momentum", "dampening", "weight_decay",
                                                                   "nesterov", "maximize", "params")}
                           for g in tsd["param_groups"]]}
    resumed = [Parameter(tp.detach().numpy().copy()) for tp in tparams]
    opt = optim.SGD(resumed, lr=0.05, momentum=0.9)
    opt.load_state_dict(sd)
    for t in range(3, 5):
        for p, tp, g in zip(resumed, tparams, _grads(t)):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(resumed, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_load_state_dict_casts_to_param_dtype():
    params = _make_params()
    opt = optim.Adam(params)
    _run(opt, params, 1)
    sd = opt.state_dict()
    for st in sd["state"].values():
        st["exp_avg"] = st["exp_avg"].astype(np.float64)
    opt2 = optim.Adam(params)
    opt2.load_state_dict(sd)
    assert all(st["exp_avg"].dtype == np.float32 for st in opt2.state.values())


# ---------------------------------------------------------------------------------- errors
def test_error_messages():
    p = Parameter(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="single Parameter"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\] must be a cnnkit.nn.Parameter, got ndarray"):
        optim.SGD([p, np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="same Parameter twice"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="not a set"):
        optim.SGD({p}, lr=0.1)
    with pytest.raises(ValueError, match="invalid learning rate lr=-1"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="nesterov=True requires momentum > 0"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="SGD: invalid momentum=-0.5"):
        optim.SGD([p], momentum=-0.5)
    with pytest.raises(ValueError, match=r"Adam: invalid beta2 \(betas\[1\]\)=1.0"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas must be a pair"):
        optim.AdamW([p], betas=(0.9,))
    with pytest.raises(ValueError, match="RMSprop: invalid eps=-1"):
        optim.RMSprop([p], eps=-1)


def test_load_state_dict_errors():
    a, b = Parameter(np.ones(2, np.float32)), Parameter(np.ones(3, np.float32))
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = np.ones(2, np.float32), np.ones(3, np.float32)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameters, the loaded one has 1"):
        optim.SGD([a, b], lr=0.1).load_state_dict({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]})
    with pytest.raises(ValueError, match="has 1 parameter groups, this optimizer has 2"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    swapped = optim.SGD([b, a], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"state 'momentum_buffer' has shape \(2,\), expected the parameter's shape \(3,\)"):
        swapped.load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"lr": 0.1})


def test_grad_shape_mismatch_is_reported():
    p = Parameter(np.ones(3, np.float32))
    p.grad = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"SGD: gradient shape \(4,\) does not match parameter shape \(3,\)"):
        optim.SGD([p], lr=0.1).step()


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c[0] == "SGD"], ids=_ids)
def test_sgd_in_chunks_matches_torch(cfg, monkeypatch):
    """SGD updates each parameter slice by slice (CHUNK_ELEMENTS): with tiny slices (several
    per parameter, the last one short) and a non-contiguous gradient it still matches PyTorch."""
    torch = pytest.importorskip("torch")
    import cnnkit.optim.sgd as sgd_module
    monkeypatch.setattr(sgd_module, "CHUNK_ELEMENTS", 5)
    _, kw = cfg
    params = _make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = optim.SGD(params, **kw)
    topt = torch.optim.SGD(tparams, **kw)
    for t in range(4):
        for p, tp, g in zip(params, tparams, _grads(t)):
            p.grad = np.asfortranarray(g) if g.ndim > 1 else g.copy()
            tp.grad = torch.tensor(g)
        kept = [p.grad.numpy().copy() for p in params]
        opt.step()
        topt.step()
        for p, tp, k in zip(params, tparams, kept):
            np.testing.assert_array_equal(p.grad, k)   # the gradient is never written
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    for i, st in topt.state_dict()["state"].items():
        if st.get("momentum_buffer") is not None:
            np.testing.assert_allclose(opt.state_dict()["state"][i]["momentum_buffer"],
                                       st["momentum_buffer"].numpy(), rtol=1e-5, atol=1e-6)


def test_even_pieces_cover_every_element_once_in_equal_shares():
    from cnnkit.optim.sgd import _even_pieces
    params = [Parameter(np.zeros(s, np.float32)) for s in [(7,), (100, 3), (2,), (41,)]]
    total = sum(p.data.size for p in params)
    for n in (1, 2, 3, 5, total, total + 4):
        bins = _even_pieces(params, n)
        assert 1 <= len(bins) <= min(n, total)
        target = -(-total // min(n, total))
        sizes = [sum(hi - lo for _, lo, hi in b) for b in bins]
        assert sizes[:-1] == [target] * (len(bins) - 1) and 0 < sizes[-1] <= target
        covered = {id(p): np.zeros(p.data.size, int) for p in params}
        order = []
        for b in bins:
            for p, lo, hi in b:
                assert 0 <= lo < hi <= p.data.size
                covered[id(p)][lo:hi] += 1
                order.append(id(p))
        assert all((c == 1).all() for c in covered.values())
        # Parameter order is kept (the pieces of one parameter are adjacent).
        assert [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k] == [id(p) for p in params]


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c[0] == "SGD"], ids=_ids)
def test_sgd_on_two_threads_equals_one_thread(cfg):
    """Big enough for the thread pool: one parameter's ranges go to different threads; the
    result is the serial one, bit for bit (elementwise operations on the same values)."""
    from cnnkit.nn import _kernels as F
    _, kw = cfg
    shapes = [(300, 700), (1000,), (64, 3, 3, 3)]
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    saved = F.get_num_threads()
    try:
        for threads in (1, 2):
            F.set_num_threads(threads)
            params = [Parameter(a.copy()) for a in init]
            opt = optim.SGD(params, **kw)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad = g
                opt.step()
            results.append([p.data.copy() for p in params])
    finally:
        F.set_num_threads(saved)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
