"""The autograd engine: graph semantics, gradient accumulation, freeing, grad mode, and the
PyTorch idioms that depend on them (a layer reused, a residual in forward, shared weights)."""

import numpy as np
import pytest

import cnnkit
from cnnkit import nn
from cnnkit.autograd import Function
import cnnkit.nn.functional as F


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_scalar_chain_and_accumulation():
    x = cnnkit.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x * x + 3 * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * x.detach().numpy() + 3)
    # A second backward through a new graph adds into .grad, as PyTorch.
    (x * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * x.detach().numpy() + 5)


def test_tensor_used_twice_gets_both_gradients():
    x = cnnkit.tensor(_rand(4, 3), dtype=cnnkit.float64, requires_grad=True)
    y = (x * x.exp() + x).sum()
    y.backward()
    a = x.detach().numpy()
    np.testing.assert_allclose(x.grad.numpy(), np.exp(a) * (1 + a) + 1, rtol=1e-12)


def test_graph_is_freed_and_second_backward_refused():
    x = cnnkit.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    z = (x.exp() * 2).sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * (2 * np.exp([1.0, 2.0])), rtol=1e-6)


def test_no_grad_records_nothing_and_enable_grad_inside():
    x = cnnkit.ones(3, requires_grad=True)
    with cnnkit.no_grad():
        y = x * 2
        with cnnkit.enable_grad():
            z = x * 2
    assert y.grad_fn is None and not y.requires_grad
    assert z.grad_fn is not None


def test_non_scalar_backward_needs_gradient():
    x = cnnkit.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (x * 2).backward()
    (x * 2).backward(cnnkit.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [2, 4, 6])


def test_user_function_with_ctx():
    class Cube(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 3 * x ** 2

    assert cnnkit.gradcheck(Cube, _rand(3, 4))
    x = cnnkit.tensor([2.0], requires_grad=True)
    Cube.apply(x).sum().backward()
    assert x.grad.item() == pytest.approx(12.0)


def test_hooks_and_retain_grad():
    x = cnnkit.tensor([1.0, -2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    seen = []
    h.register_hook(lambda g: seen.append(g.numpy().copy()))
    (h * h).sum().backward()
    np.testing.assert_array_equal(h.grad.numpy(), [6.0, -12.0])
    np.testing.assert_array_equal(seen[0], [6.0, -12.0])
    np.testing.assert_array_equal(x.grad.numpy(), [18.0, -36.0])


def test_integer_outputs_never_require_grad():
    x = cnnkit.randn(3, 4, requires_grad=True)
    values, indices = x.max(dim=1)
    assert values.requires_grad and not indices.requires_grad
    assert indices.dtype == np.int64


def test_autograd_grad_returns_without_touching_dot_grad():
    x = cnnkit.tensor([3.0], requires_grad=True)
    (g,) = cnnkit.autograd.grad((x * x).sum(), x)
    assert g.item() == pytest.approx(6.0) and x.grad is None


# ---------------------------------------------------------------- PyTorch idioms, checked against torch
class _Reuse(nn.Module):
    """A pool and a ReLU instance used twice, a residual in forward, a weight used twice."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.relu(x + self.conv2(x))             # residual, ReLU instance reused
        x = self.pool(x)                              # pool instance reused
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.fc(self.relu(self.fc(x)))            # shared weights: one layer twice
        return self.head(x)


def _torch_twin(torch, model):
    tnn, tF = torch.nn, torch.nn.functional

    class Twin(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(2, 4, 3, padding=1)
            self.conv2 = tnn.Conv2d(4, 4, 3, padding=1)
            self.pool = tnn.MaxPool2d(2)
            self.relu = tnn.ReLU()
            self.fc = tnn.Linear(4, 4)
            self.head = tnn.Linear(4, 3)

        def forward(self, x):
            x = self.pool(self.relu(self.conv1(x)))
            x = self.relu(x + self.conv2(x))
            x = self.pool(x)
            x = tF.adaptive_avg_pool2d(x, 1).flatten(1)
            x = self.fc(self.relu(self.fc(x)))
            return self.head(x)

    twin = Twin().double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return twin


def test_reused_layers_residual_and_shared_weights_match_torch():
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(0)
    model = _Reuse().to(cnnkit.float64)
    x = _rand(3, 2, 8, 8, seed=1)
    y = np.array([0, 2, 1])
    loss = F.cross_entropy(model(cnnkit.tensor(x)), cnnkit.tensor(y))
    loss.backward()
    twin = _torch_twin(torch, model)
    tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    # float64 on both sides: differences are rounding of sums of a few hundred terms.
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-12)
    for (name, p), (_, tp) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_reused_layers_gradcheck():
    cnnkit.manual_seed(1)
    model = _Reuse()
    assert cnnkit.gradcheck(model, _rand(2, 2, 8, 8, seed=2), rtol=1e-5, atol=1e-7)


def test_sequential_and_subclass_twin_give_the_same_gradients():
    """The fusion planner (Sequential) and plain calls (a subclass) compute the same thing."""
    cnnkit.manual_seed(3)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                        nn.Conv2d(6, 6, 1), nn.MaxPool2d(1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))

    class Twin(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = nn.ModuleList(layers)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    twin = Twin(list(seq))
    x = cnnkit.tensor(_rand(2, 1, 10, 10, seed=4))
    y = cnnkit.tensor([0, 2])
    grads = []
    for model in (seq, twin):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad.numpy().copy() for p in model.parameters()])
    # Both run the same float32 kernels; the fused passes change only where rounding happens
    # in the ReLU / bias order (a few ulp of values of size ~1).
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_get_no_gradient():
    cnnkit.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    model[0].requires_grad_(False)
    F.cross_entropy(model(cnnkit.randn(2, 1, 6, 6)), cnnkit.tensor([0, 1])).backward()
    assert model[0].weight.grad is None and model[3].weight.grad is not None


def test_module_to_device_and_probes():
    model = nn.Linear(2, 2)
    assert model.to("cpu") is model and model.to(cnnkit.device("cpu")) is model
    assert not cnnkit.cuda.is_available() and not cnnkit.accelerator.is_available()
    with pytest.raises(RuntimeError, match="'cuda' is not available"):
        model.to("cuda")
    with pytest.raises(RuntimeError, match="cnnkit runs on the CPU"):
        cnnkit.ones(2).to("cuda:0")
