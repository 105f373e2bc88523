"""Run-time fusion of layers called one by one in a forward() (``nn.deferred``): without
gradients a convolution waits for the ReLU / pool called next and runs with it as one
fused pass. These tests check that the values are those of the calls one by one, that the
fused pass really runs, that nothing runs twice, and when the values are computed."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit
import cnnkit.nn as nn
import cnnkit.nn.functional as F
from cnnkit.nn import _kernels as K
from cnnkit.nn import deferred
from float32_tolerance import assert_float32_close
from spy_helpers import count_calls

KERNELS = ("conv2d_forward", "conv2d_relu_max_pool2d", "conv2d_relu_avg_pool2d")


class Probe(nn.Module):
    """Runs ``body(self, x)`` as its forward, keeping what it wants to look at."""

    def __init__(self, body, in_channels=3, out_channels=5, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.body = body
        self.seen = {}

    def forward(self, x):
        return self.body(self, x)


def _input(shape=(4, 3, 10, 10), seed=0):
    return cnnkit.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _eager(model, x):
    """The output of ``model.forward`` called directly, at the top level: no module call
    encloses its layers, so each runs as it is called (nothing is deferred)."""
    with cnnkit.no_grad():
        return model.forward(x).data


def _both(model, x):
    """(output of the model's call without gradients, the layers' output one by one)."""
    with cnnkit.no_grad():
        lazy = model(x)
    return lazy.data, _eager(model, x)


def _counted(model, x, monkeypatch):
    """(the model's output without gradients, the convolution kernels it ran: name -> calls)."""
    calls = count_calls(monkeypatch, K, *KERNELS)
    with cnnkit.no_grad():
        return model(x), calls


# A convolution of C x 3 x 3 taps: the fused pass adds its products in other chunks of the
# batch than the layer-by-layer run, so they agree to the float32 rounding of these sums
# (max and ReLU select values and do not add rounding; a 2x2 mean adds 4 terms).
def _terms(model):
    return model.conv.in_channels * 9 + 4


PLANS = {
    "relu": (lambda m, x: F.relu(m.conv(x)), ["conv2d_forward"]),
    "relu_max": (lambda m, x: F.max_pool2d(F.relu(m.conv(x)), 2), ["conv2d_relu_max_pool2d"]),
    "max_relu": (lambda m, x: F.relu(F.max_pool2d(m.conv(x), 2)), ["conv2d_relu_max_pool2d"]),
    "relu_avg": (lambda m, x: F.avg_pool2d(F.relu(m.conv(x)), 2), ["conv2d_relu_avg_pool2d"]),
    "modules": (lambda m, x: nn.MaxPool2d(2, 2)(nn.ReLU()(m.conv(x))), ["conv2d_relu_max_pool2d"]),
    "functional_conv": (lambda m, x: F.max_pool2d(F.relu(F.conv2d(x, m.conv.weight, m.conv.bias, padding=1)), 2),
                        ["conv2d_relu_max_pool2d"]),
    "strided_pool": (lambda m, x: F.max_pool2d(F.relu(m.conv(x)), 3, stride=2, padding=1, ceil_mode=True),
                     ["conv2d_relu_max_pool2d"]),
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_each_plan_runs_as_one_fused_pass_with_the_layers_values(plan, monkeypatch):
    body, kernels = PLANS[plan]
    model = Probe(body)
    x = _input()
    eager = _eager(model, x)
    lazy, calls = _counted(model, x, monkeypatch)
    assert calls == {k: 1 for k in kernels}          # one pass, and only the fused one
    assert type(lazy) is not deferred.DeferredConv or not lazy.pending
    assert lazy.shape == eager.shape and lazy.dtype == np.float32
    assert_float32_close(lazy.data, eager, _terms(model))


@pytest.mark.parametrize("body", [
    lambda m, x: F.relu(F.avg_pool2d(m.conv(x), 2)),     # the mean before the ReLU: no fused form
    lambda m, x: F.max_pool2d(m.conv(x), 2),             # a max pool alone: conv, then the pool
    lambda m, x: F.relu(F.relu(m.conv(x))),
    lambda m, x: F.max_pool2d(F.max_pool2d(F.relu(m.conv(x)), 2), 2),
    lambda m, x: m.conv(x) * 2,
    lambda m, x: F.relu(m.conv(x)).sum(dim=1),
], ids=["avg_then_relu", "max_alone", "relu_twice", "pool_twice", "arithmetic", "reduction"])
def test_steps_that_do_not_fuse_give_the_layers_values(body):
    model = Probe(body)
    lazy, eager = _both(model, _input())
    assert_float32_close(lazy, eager, _terms(model))


def test_the_reference_networks_written_with_F_match_their_layers_one_by_one():
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import functional_models as FM
    for name, cls in FM.MODELS.items():
        cnnkit.manual_seed(0)
        model = cls().eval()
        shape = (3, 3, 32, 32) if name == "vgg_cifar" else (3, 1, 28, 28)
        lazy, eager = _both(model, _input(shape))
        # Layers' float32 errors add up through the network: the fan-ins of all its layers.
        fan_ins = sum(p.data[0].size for n, p in model.named_parameters() if n.endswith("weight"))
        assert_float32_close(lazy, eager, fan_ins)


def test_a_tensor_someone_still_holds_is_computed_once_and_the_step_runs_on_it(monkeypatch):
    def body(m, x):
        y = m.conv(x)
        z = F.relu(y)              # y is still held: z must not recompute the convolution
        return z + y

    model = Probe(body)
    x = _input()
    lazy, calls = _counted(model, x, monkeypatch)
    assert calls == {"conv2d_forward": 1}
    assert_float32_close(lazy.data, _eager(model, x), _terms(model))


def test_two_steps_joined_to_one_tensor_share_its_convolution(monkeypatch):
    def body(m, x):
        y = m.conv(x)
        a, b = F.relu(y), F.max_pool2d(y, 2)
        del y                      # only the two plans hold it now
        return a.sum(dim=(2, 3)) + b.sum(dim=(2, 3))

    model = Probe(body)
    x = _input()
    lazy, calls = _counted(model, x, monkeypatch)
    assert calls == {"conv2d_forward": 1}
    # The sums over 10 x 10 positions add 100 terms to each convolution's.
    assert_float32_close(lazy.data, _eager(model, x), _terms(model) * 100)


def test_shape_and_dtype_are_known_before_anything_is_computed():
    def body(m, x):
        y = F.max_pool2d(F.relu(m.conv(x)), 2)
        m.seen.update(type=type(y), pending=y.pending, shape=tuple(y.shape), size=y.size(1), ndim=y.ndim,
                      dtype=y.dtype, still=y.pending)
        return y

    model = Probe(body)
    with cnnkit.no_grad():
        out = model(_input())
    seen = model.seen
    assert seen["type"] is deferred.DeferredConv and seen["pending"] and seen["still"]
    assert seen["shape"] == (4, 5, 5, 5) == tuple(out.shape) and seen["size"] == 5 and seen["ndim"] == 4
    assert seen["dtype"] == np.float32
    assert not out.pending                      # the outermost call computed it


def test_what_the_outermost_call_leaves_behind_is_computed(monkeypatch):
    kept = []

    def body(m, x):
        kept.append(F.relu(m.conv(x)))             # kept by the caller, not returned
        return x.sum()

    model = Probe(body)
    with cnnkit.no_grad():
        model(_input())
    assert not kept[0].pending
    assert deferred._state.depth == 0 and deferred._state.created == []


def test_an_in_place_write_into_an_input_comes_after_the_convolution():
    def body(m, x):
        y = F.relu(m.conv(x))
        x.mul_(0)                   # the program says: conv of the original x, then zero x
        return y

    model = Probe(body)
    x = _input()
    eager = _eager(model, x.clone())
    with cnnkit.no_grad():
        lazy = model(x)
    assert np.all(x.data == 0)
    assert_float32_close(lazy.data, eager, _terms(model))


def test_at_the_top_level_nothing_is_deferred():
    conv = nn.Conv2d(3, 4, 3)
    x = _input()
    assert type(conv(x)) is cnnkit.Tensor                       # called by itself, not in a forward
    assert type(F.conv2d(x, conv.weight, conv.bias)) is cnnkit.Tensor
    with cnnkit.no_grad():
        assert type(conv(x)) is cnnkit.Tensor
        assert type(F.conv2d(x, conv.weight, conv.bias)) is cnnkit.Tensor


# ---------------------------------------------------------------------------------- with gradients
def _grads(model, x, g, run):
    """(output, d/dx, d/dweight, d/dbias) of sum(run(model, x) * g), in float64."""
    model.zero_grad()
    xt = cnnkit.tensor(x, requires_grad=True)
    out = run(model, xt)
    (out * cnnkit.from_numpy(g)).sum().backward()
    return out.data, xt.grad.data, model.conv.weight.grad.data, model.conv.bias.grad.data


@pytest.mark.parametrize("plan", [p for p in PLANS if p != "relu_avg"])
def test_with_gradients_each_plan_records_its_fused_function_and_gives_the_layers_gradients(plan):
    from graph_helpers import names
    body, _ = PLANS[plan]
    model = Probe(body).to(cnnkit.float64)
    x = np.random.default_rng(1).standard_normal((3, 3, 10, 10))
    fused = model(cnnkit.tensor(x, requires_grad=True))
    expected = {"relu": "Conv2d", "strided_pool": "Conv2dReluMaxPool"}.get(plan, "Conv2dReluMaxPool")
    assert names(fused)[0] == expected and "ReLU" not in names(fused)
    g = np.random.default_rng(2).standard_normal(fused.shape)
    # The reference: the same calls at the top level, where nothing is deferred.
    got = _grads(model, x, g, lambda m, xt: m(xt))
    want = _grads(model, x, g, lambda m, xt: body(m, xt))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)   # float64: rounding only


def test_with_gradients_an_average_pool_runs_on_the_fused_relu():
    model = Probe(PLANS["relu_avg"][0])
    from graph_helpers import names
    assert names(model(_input()))[:2] == ["AvgPool2d", "Conv2d"]


def test_a_module_written_with_F_passes_gradcheck_through_the_fused_plans():
    def body(m, x):
        y = F.max_pool2d(F.relu(m.conv(x)), 2)
        return F.relu(m.conv2(y)) + F.relu(F.max_pool2d(m.conv2(y), 1))

    model = Probe(body, in_channels=2, out_channels=3)
    model.conv2 = nn.Conv2d(3, 2, 3, padding=1)
    assert cnnkit.gradcheck(model, np.random.default_rng(3).standard_normal((2, 2, 6, 6)), rtol=1e-5, atol=1e-7)


def test_a_step_called_in_another_grad_mode_does_not_join():
    def body(m, x):
        y = m.conv(x)
        with cnnkit.no_grad():
            z = F.relu(y)
        m.seen["z"] = z
        return F.relu(y)

    model = Probe(body)
    out = model(_input())
    assert out.grad_fn is not None and model.seen["z"].grad_fn is None
    np.testing.assert_array_equal(model.seen["z"].data, out.data)


def test_an_error_inside_forward_leaves_no_state_behind(monkeypatch):
    def body(m, x):
        m.seen["kept"] = F.relu(m.conv(x))
        raise ValueError("boom")

    model = Probe(body)
    calls = count_calls(monkeypatch, K, *KERNELS)
    with cnnkit.no_grad(), pytest.raises(ValueError, match="boom"):
        model(_input())
    assert deferred._state.depth == 0 and deferred._state.created == []
    assert calls == {}                           # nothing computed after the error
    kept = model.seen["kept"]
    assert kept.pending and tuple(kept.shape) == (4, 5, 10, 10)
    assert float(kept.data.min()) >= 0           # still computed on use
    ok = Probe(lambda m, x: F.relu(m.conv(x)))
    with cnnkit.no_grad():
        assert not ok(_input()).pending


def test_a_forward_hook_on_the_convolution_sees_its_values():
    model = Probe(lambda m, x: F.relu(m.conv(x)))
    seen = []
    model.conv.register_forward_hook(lambda mod, inp, out: seen.append(out.numpy().copy()))
    x = _input()
    with cnnkit.no_grad():
        model(x)
    plain = nn.Conv2d(3, 5, 3, padding=1)
    plain.load_state_dict(model.conv.state_dict())
    with cnnkit.no_grad():
        reference = plain(x).data
    np.testing.assert_array_equal(seen[0], reference)    # the same kernel on the same input


def test_the_refcount_calibration_recognises_a_tensor_only_the_plan_holds():
    later = deferred._Link()
    later._source = deferred._Link()
    anc = later._source
    assert deferred._refs(anc) == deferred._ONLY_THE_PLAN
    holders = [anc]                         # a second holder
    assert deferred._refs(anc) > deferred._ONLY_THE_PLAN and holders
