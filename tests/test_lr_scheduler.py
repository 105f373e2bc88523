"""LR schedulers: the lr (and momentum) sequences equal PyTorch's, state_dict resume, errors."""

import json
import math

import numpy as np
import pytest

import cnnkit.optim as optim
from cnnkit.nn import Parameter
from cnnkit.optim import lr_scheduler as sched

# (scheduler name, keyword arguments, optimizer name, steps) — keywords also go to torch.
CASES = [
    ("StepLR", dict(step_size=7), "SGD", 40),
    ("StepLR", dict(step_size=3, gamma=0.5), "Adam", 40),
    ("MultiStepLR", dict(milestones=[5, 12, 12, 30], gamma=0.3), "SGD", 40),
    ("ExponentialLR", dict(gamma=0.93), "SGD", 60),
    ("CosineAnnealingLR", dict(T_max=25), "SGD", 90),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001), "Adam", 45),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=100), "SGD", 100),
    ("OneCycleLR", dict(max_lr=[0.5, 0.05], total_steps=57, anneal_strategy="linear"), "SGD", 57),
    ("OneCycleLR", dict(max_lr=0.01, epochs=4, steps_per_epoch=13, pct_start=0.25, div_factor=10.0,
                        final_div_factor=100.0), "Adam", 52),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=80, three_phase=True, base_momentum=0.8, max_momentum=0.9),
     "SGD", 80),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=30, three_phase=True, anneal_strategy="linear"), "AdamW", 30),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=30, cycle_momentum=False), "RMSprop", 30),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=30), "RMSprop", 30),
]


def _ids(case):
    return f"{case[0]}-{case[2]}-" + "-".join(f"{k}={v}" for k, v in case[1].items())


def _optimizers(opt_name, torch=None):
    """A cnnkit optimizer and (if torch is given) the same torch one, two groups each."""
    kw = {"momentum": 0.9} if opt_name == "SGD" else {}
    a, b = Parameter(np.zeros(2, np.float32)), Parameter(np.zeros(3, np.float32))
    ours = getattr(optim, opt_name)([{"params": [a]}, {"params": [b], "lr": 0.02}], lr=0.1, **kw)
    if torch is None:
        return ours, None
    ta, tb = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    theirs = getattr(torch.optim, opt_name)([{"params": [ta]}, {"params": [tb], "lr": 0.02}], lr=0.1, **kw)
    return ours, theirs


def _momenta(groups):
    out = []
    for g in groups:
        if "betas" in g:
            out.append(float(g["betas"][0]))
        elif "momentum" in g:
            out.append(float(g["momentum"]))
    return out


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_sequence_matches_torch(case):
    torch = pytest.importorskip("torch")
    name, kw, opt_name, steps = case
    opt, topt = _optimizers(opt_name, torch)
    s = getattr(sched, name)(opt, **kw)
    ts = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12, abs=0)
    for _ in range(steps - 1 if name == "OneCycleLR" else steps):
        opt.step()
        topt.step()
        s.step()
        ts.step()
        assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12, abs=0)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-12)
        assert _momenta(opt.param_groups) == pytest.approx(_momenta(topt.param_groups), rel=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_state_dict_resume_equals_straight_run(case):
    name, kw, opt_name, steps = case
    total = steps - 1 if name == "OneCycleLR" else steps
    opt, _ = _optimizers(opt_name)
    s = getattr(sched, name)(opt, **kw)
    straight = []
    for _ in range(total):
        s.step()
        straight.append(s.get_last_lr() + _momenta(opt.param_groups))

    half = total // 2
    opt1, _ = _optimizers(opt_name)
    s1 = getattr(sched, name)(opt1, **kw)
    for _ in range(half):
        s1.step()
    # What a checkpoint stores: both state dicts through JSON.
    opt_sd = json.loads(json.dumps(opt1.state_dict(), default=lambda a: a.tolist()))
    sched_sd = json.loads(json.dumps(s1.state_dict()))

    opt2, _ = _optimizers(opt_name)
    s2 = getattr(sched, name)(opt2, **kw)
    opt2.load_state_dict(opt_sd)
    s2.load_state_dict(sched_sd)
    resumed = []
    for _ in range(total - half):
        s2.step()
        resumed.append(s2.get_last_lr() + _momenta(opt2.param_groups))
    assert resumed == straight[half:]


def test_step_lr_by_hand():
    p = Parameter(np.zeros(1, np.float32))
    opt = optim.SGD([p], lr=1.0)
    s = sched.StepLR(opt, step_size=2, gamma=0.5)
    seen = [s.get_last_lr()[0]]
    for _ in range(5):
        s.step()
        seen.append(s.get_last_lr()[0])
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_cosine_reaches_eta_min_at_t_max():
    p = Parameter(np.zeros(1, np.float32))
    opt = optim.SGD([p], lr=0.1)
    s = sched.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    for _ in range(5):
        s.step()
    assert s.get_last_lr()[0] == pytest.approx(0.01 + 0.09 * 0.5, rel=1e-12)
    for _ in range(5):
        s.step()
    assert s.get_last_lr()[0] == pytest.approx(0.01, rel=1e-12)


def test_one_cycle_endpoints_and_overrun():
    p = Parameter(np.zeros(1, np.float32))
    opt = optim.SGD([p], lr=1.0, momentum=0.9)
    s = sched.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.3)
    assert s.get_last_lr()[0] == pytest.approx(1.0 / 25)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    lrs = [s.get_last_lr()[0]]
    for _ in range(9):
        s.step()
        lrs.append(s.get_last_lr()[0])
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 2  # peak at step pct*T - 1
    assert lrs[-1] == pytest.approx(1.0 / 25 / 1e4)
    with pytest.raises(ValueError, match="tried to step 11 times; the schedule has total_steps=10"):
        s.step()
        s.step()


def test_closed_form_epoch_argument():
    p = Parameter(np.zeros(1, np.float32))
    opt = optim.SGD([p], lr=1.0)
    s = sched.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    s.step(5)
    assert s.get_last_lr()[0] == pytest.approx(0.01)
    s2 = sched.ExponentialLR(optim.SGD([p], lr=1.0), gamma=0.5)
    s2.step(3)
    assert s2.get_last_lr()[0] == pytest.approx(0.125)


# ---------------------------------------------------------------------------------- ReduceLROnPlateau
PLATEAU_CASES = [
    dict(),
    dict(patience=2, factor=0.5),
    dict(mode="max", patience=1, threshold=0.01, threshold_mode="abs", cooldown=2),
    dict(patience=0, factor=0.2, min_lr=[0.01, 0.001], cooldown=1),
]
METRICS = [1.0, 0.9, 0.9, 0.95, 0.91, 0.899, 0.9, 0.9, 0.9, 0.8, 0.85, 0.86, 0.87, 0.88, 0.9,
           0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("kw", PLATEAU_CASES, ids=[str(k) for k in PLATEAU_CASES])
def test_plateau_matches_torch(kw):
    torch = pytest.importorskip("torch")
    opt, topt = _optimizers("SGD", torch)
    s = sched.ReduceLROnPlateau(opt, **kw)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    for m in METRICS * 2:
        s.step(m)
        ts.step(m)
        assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)
        assert s.num_bad_epochs == ts.num_bad_epochs and s.best == ts.best


def test_plateau_state_dict_resume():
    opt, _ = _optimizers("SGD")
    s = sched.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    straight = []
    for m in METRICS:
        s.step(m)
        straight.append(s.get_last_lr())
    opt1, _ = _optimizers("SGD")
    s1 = sched.ReduceLROnPlateau(opt1, patience=1, factor=0.5)
    for m in METRICS[:12]:
        s1.step(m)
    opt_sd = json.loads(json.dumps(opt1.state_dict()))
    sched_sd = json.loads(json.dumps(s1.state_dict()))
    opt2, _ = _optimizers("SGD")
    s2 = sched.ReduceLROnPlateau(opt2, patience=1, factor=0.5)
    opt2.load_state_dict(opt_sd)
    s2.load_state_dict(sched_sd)
    resumed = []
    for m in METRICS[12:]:
        s2.step(m)
        resumed.append(s2.get_last_lr())
    assert resumed == straight[12:]


def test_plateau_state_dict_fresh_is_json_able():
    opt, _ = _optimizers("SGD")
    sd = sched.ReduceLROnPlateau(opt).state_dict()
    back = json.loads(json.dumps(sd))
    assert back["best"] == math.inf


# ---------------------------------------------------------------------------------- errors
def test_scheduler_errors():
    p = Parameter(np.zeros(1, np.float32))
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(TypeError, match="expected a cnnkit.optim Optimizer, got list"):
        sched.StepLR([p], step_size=1)
    with pytest.raises(ValueError, match="StepLR: step_size must be a positive int, got 0"):
        sched.StepLR(opt, step_size=0)
    with pytest.raises(KeyError, match="no 'initial_lr'"):
        sched.ExponentialLR(optim.SGD([p], lr=0.1), gamma=0.9, last_epoch=3)
    with pytest.raises(ValueError, match="give either total_steps or both epochs and steps_per_epoch"):
        sched.OneCycleLR(opt, max_lr=0.1)
    with pytest.raises(ValueError, match="anneal_strategy must be 'cos' or 'linear', got 'exp'"):
        sched.OneCycleLR(opt, max_lr=0.1, total_steps=10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="max_lr must have one value per parameter group: got 2 values for 1"):
        sched.OneCycleLR(opt, max_lr=[0.1, 0.2], total_steps=10)
    with pytest.raises(ValueError, match="pct_start must be a float in"):
        sched.OneCycleLR(opt, max_lr=0.1, total_steps=10, pct_start=1.5)
    with pytest.raises(ValueError, match="factor must be < 1.0"):
        sched.ReduceLROnPlateau(opt, factor=2.0)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        sched.ReduceLROnPlateau(opt, mode="up")
    with pytest.raises(TypeError, match=r"needs the monitored metric, e.g. scheduler.step\(val_loss\)"):
        sched.ReduceLROnPlateau(opt).step()


def test_one_cycle_needs_momentum_when_cycling():
    class NoMomentum(optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

    opt = NoMomentum([Parameter(np.zeros(1, np.float32))])
    with pytest.raises(ValueError, match="cycle_momentum=True needs an optimizer with 'momentum' or 'betas'"):
        sched.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    sched.OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=False)  # fine without
