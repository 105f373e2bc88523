"""A cnnkit model inside a PyTorch program (cnnkit.torch_bridge): same values and
gradients as the PyTorch twin, and a PyTorch optimizer trains the cnnkit weights."""

import numpy as np
import pytest

import cnnkit
from cnnkit import nn

torch = pytest.importorskip("torch")


def _pair():
    from cnnkit.torch_bridge import to_torch

    cnnkit.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 5))
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return to_torch(ours), ours, twin


def test_forward_and_backward_match_the_pytorch_twin():
    bridged, ours, twin = _pair()
    head = torch.nn.Linear(5, 2)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y = torch.tensor([0, 1, 1])
    loss_a = torch.nn.functional.cross_entropy(head(bridged(xa)), y)
    loss_b = torch.nn.functional.cross_entropy(head(twin(xb)), y)
    loss_a.backward()
    grads_head_a = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    loss_b.backward()
    # float32 on both sides, the same sums in other orders: a few ulp of values of size ~1.
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-6)
    for a, b in zip(grads_head_a, head.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-6)
    for a, b in zip(bridged.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_a_pytorch_optimizer_trains_the_cnnkit_model():
    bridged, ours, _ = _pair()
    before = ours[0].weight.data.copy()
    opt = torch.optim.SGD(bridged.parameters(), lr=0.5)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((8, 1, 8, 8)).astype(np.float32))
    y = torch.arange(8) % 5
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(bridged(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not np.array_equal(ours[0].weight.data, before)      # the shared memory moved
    np.testing.assert_array_equal(ours[0].weight.data, next(iter(bridged.parameters())).detach().numpy())
