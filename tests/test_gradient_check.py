"""gradcheck itself: it must pass correct layers, catch each kind of broken one, and leave no trace."""

import numpy as np
import pytest

import cnnkit
from cnnkit.gradient_check import GradcheckError, GradcheckReport, gradcheck, gradcheck_loss
from cnnkit.nn import BatchNorm1d, Dropout, Linear, Module, MSELoss, Parameter, Sequential


class Scale(Module):
    """The docstring example: y = x * w, one learnable scale per feature."""

    def __init__(self, n, bug=None):
        super().__init__()
        self.w = Parameter(np.linspace(0.5, 1.5, n).astype(np.float32))
        self.bug = bug
        self._cache = None

    def forward(self, x):
        self._cache = x
        return x * self.w.data

    def backward(self, grad_out):
        x = self._need_cache(self._cache)
        gw = (grad_out * x).sum(axis=0)
        if self.bug == "param":
            gw = gw * 1.01
        if self.bug != "no_param_grad":
            self.w.accumulate_grad(gw)
        if self.bug == "write":
            grad_out *= self.w.data
            return grad_out
        if self.bug == "input":
            return grad_out * self.w.data + 1e-3
        if self.bug == "dtype":
            return (grad_out * self.w.data).astype(np.float32)
        return grad_out * self.w.data


def _x(shape=(4, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_passes_correct_layer_and_returns_true():
    assert gradcheck(Scale(3), _x()) is True


@pytest.mark.parametrize("bug,message", [
    ("param", r"w .*FAILED"),
    ("input", r"input .*FAILED"),
    ("write", r"backward wrote into grad_out"),
    ("no_param_grad", r"parameter w received no gradient"),
    ("dtype", r"grad of input has dtype float32 for a float64 input"),
])
def test_catches_broken_backward(bug, message):
    with pytest.raises(GradcheckError, match=message):
        gradcheck(Scale(3, bug=bug), _x())


def test_failure_message_names_tensor_index_and_values():
    report = gradcheck(Scale(3, bug="param"), _x(), raise_exception=False)
    assert isinstance(report, GradcheckReport) and not report
    text = str(report)
    assert "gradcheck FAILED for Scale()" in text
    assert "worst at index (" in text and "analytic" in text and "numeric" in text
    failing = [c for c in report.checks if not c.passed]
    assert [c.name for c in failing] == ["w"]
    assert failing[0].max_rel_err == pytest.approx(0.01, rel=1e-3)


def test_report_mode_when_passing():
    report = gradcheck(Scale(3), _x(), raise_exception=False)
    assert report and report.passed
    assert [c.name for c in report.checks] == ["input", "w"]
    assert all(c.max_abs_err < 1e-7 for c in report.checks)


def test_frozen_parameter_must_not_receive_a_grad():
    class Leaky(Scale):
        def backward(self, grad_out):
            x = self._cache
            self.w.grad = (grad_out * x).sum(axis=0)  # ignores requires_grad: a bug
            return grad_out * self.w.data

    layer = Leaky(3)
    layer.w.requires_grad = False
    with pytest.raises(GradcheckError, match="frozen parameter w .* received a gradient"):
        gradcheck(layer, _x())
    ok = Scale(3)
    ok.w.requires_grad = False
    assert gradcheck(ok, _x())


def test_module_state_is_restored():
    cnnkit.manual_seed(0)
    model = Sequential(Linear(3, 4), BatchNorm1d(4))
    x = _x((5, 3)).astype(np.float32)
    model(x)
    model.backward(np.ones((5, 4), np.float32))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    rng_state = cnnkit.random.get_rng_state()
    running_mean = model[1].running_mean
    assert gradcheck(model, x)
    assert model[1].running_mean is running_mean
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype, k
        np.testing.assert_array_equal(v, before[k], err_msg=k)  # running stats too
    for n, p in model.named_parameters():
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p.grad, grads[n])
    assert cnnkit.random.get_rng_state() == rng_state
    assert model.training


def test_nondeterministic_forward_is_reported():
    class Noisy(Module):
        def __init__(self):
            super().__init__()
            self.rng = None

        def forward(self, x):
            return x + np.random.standard_normal(x.shape)  # not through cnnkit.random: not replayable

        def backward(self, grad_out):
            return grad_out

    with pytest.raises(GradcheckError, match="forward is not deterministic"):
        gradcheck(Noisy(), _x())


def test_dropout_masks_are_replayed():
    assert gradcheck(Dropout(0.5), _x((6, 5)))
    assert gradcheck(Dropout(0.5, generator=np.random.default_rng(0)), _x((6, 5)))


def test_function_pair_and_object():
    def forward(a, b):
        return a * b

    state = {}

    def fwd(a, b):
        state["ab"] = (a, b)
        return forward(a, b)

    def bwd(g):
        a, b = state["ab"]
        return g * b, g * a

    assert gradcheck((fwd, bwd), _x(), _x(seed=1))
    with pytest.raises(GradcheckError, match=r"input\[1\] .*FAILED"):
        gradcheck((fwd, lambda g: (g * state["ab"][1], g)), _x(), _x(seed=1))
    with pytest.raises(TypeError, match="without a graph.*a \\(forward_fn, backward_fn\\) pair"):
        gradcheck(np.tanh, _x())
    with pytest.raises(TypeError, match="expected a cnnkit.nn.Module, a Function"):
        gradcheck(3, _x())


def test_integer_inputs_pass_through():
    def fwd(x, idx):
        state["idx"] = idx
        return x[np.arange(len(idx)), idx]

    def bwd(g):
        out = np.zeros((3, 4))
        out[np.arange(3), state["idx"]] = g
        return out

    state = {}
    assert gradcheck((fwd, bwd), _x((3, 4)), np.array([0, 3, 1]))


def test_explicit_grad_out_shape_checked():
    with pytest.raises(ValueError, match="grad_out has shape \\(2,\\) but the output has shape \\(4, 3\\)"):
        gradcheck(Scale(3), _x(), grad_out=np.ones(2))
    assert gradcheck(Scale(3), _x(), grad_out=np.ones((4, 3)))


def test_gradcheck_loss_catches_a_wrong_loss_gradient():
    class BadMSE(MSELoss):
        def backward(self, grad=None):
            return super().backward(grad) * 0.5  # forgot the factor 2

    assert gradcheck_loss(MSELoss(), _x(), _x(seed=1))
    with pytest.raises(GradcheckError, match="input .*FAILED"):
        gradcheck_loss(BadMSE(), _x(), _x(seed=1))
    report = gradcheck_loss(MSELoss(reduction="none"), _x(), _x(seed=1), raise_exception=False)
    assert report.passed


def test_module_takes_one_input():
    with pytest.raises(TypeError, match="a Module takes exactly one input, got 2"):
        gradcheck(Scale(3), _x(), _x())


def test_exported_at_top_level():
    assert cnnkit.gradcheck is gradcheck


def test_docstring_example_runs():
    import textwrap

    import cnnkit.gradient_check as module

    code = module.__doc__.split("Use it to test your own layers::")[1].split("What is checked")[0]
    namespace = {}
    exec(textwrap.dedent(code), namespace)  # the example ends with a gradcheck call that must pass
    assert "Scale" in namespace
