"""fashion_cnn (the strong Fashion-MNIST model): shape, keys, PyTorch parity, errors, training."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit
from cnnkit import nn, optim
from cnnkit.models import create
from cnnkit.models.fashion import fashion_cnn


def _torch_reference(torch_nn, num_classes=10, in_channels=1, side=7):
    def cbr(a, b):
        return [torch_nn.Conv2d(a, b, 3, padding=1, bias=False), torch_nn.BatchNorm2d(b), torch_nn.ReLU()]

    features = torch_nn.Sequential(*cbr(in_channels, 32), torch_nn.MaxPool2d(2),
                                   *cbr(32, 64), *cbr(64, 64), torch_nn.MaxPool2d(2))
    classifier = torch_nn.Sequential(torch_nn.Flatten(), torch_nn.Linear(64 * side * side, 256, bias=False),
                                     torch_nn.BatchNorm1d(256), torch_nn.ReLU(), torch_nn.Dropout(0.3),
                                     torch_nn.Linear(256, num_classes))
    return torch_nn.Sequential(__import__("collections").OrderedDict(features=features, classifier=classifier))


def test_shape_registry_and_config():
    model = create("fashion_cnn")
    assert model.config == {"name": "fashion_cnn", "kwargs": {}}
    model.eval()
    out = model(np.zeros((3, 1, 28, 28), dtype=np.float32))
    assert out.shape == (3, 10) and out.dtype == np.float32
    m2 = fashion_cnn(num_classes=5, in_channels=3, input_size=32)
    m2.eval()
    assert m2(np.zeros((2, 3, 32, 32), dtype=np.float32)).shape == (2, 5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="fashion_cnn: input_size must be a multiple of 4"):
        fashion_cnn(input_size=30)
    with pytest.raises(ValueError, match="fashion_cnn: num_classes"):
        fashion_cnn(num_classes=0)
    with pytest.raises(ValueError, match="fashion_cnn: dropout"):
        fashion_cnn(dropout=1.5)


def test_parity_with_pytorch_train_and_eval():
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(0)
    # Seeded: with unseeded weights about 1 draw in 20 puts two max-pool inputs within
    # float32 rounding of each other, and then either library may route that window's
    # gradient to the other tap (measured: torch's float32 result disagreed with its own
    # float64 one on seeds 24 and 41, cnnkit's on seed 58 - a near-tie, not a bug).
    torch.manual_seed(0)
    ours = fashion_cnn()
    ref = _torch_reference(torch.nn)
    ref_sd = ref.state_dict()
    assert list(ours.state_dict()) == list(ref_sd)  # same keys, same order
    ours.load_state_dict({k: v.numpy() for k, v in ref_sd.items()})
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())

    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 28, 28), dtype=np.float32)
    g = rng.normal(size=(8, 10)).astype(np.float32)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), expected, rtol=1e-4, atol=1e-5)

    # Training mode without dropout (p=0 on both sides) so the comparison is deterministic.
    ours.classifier[4].p = 0.0
    ref.classifier[4].p = 0.0
    ours.train()
    ref.train()
    xt = torch.from_numpy(x).requires_grad_(True)
    out_ref = ref(xt)
    out_ref.backward(torch.from_numpy(g))
    out = ours(x)
    np.testing.assert_allclose(out, out_ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    grad_x = ours.backward(g)
    np.testing.assert_allclose(grad_x, xt.grad.numpy(), rtol=1e-3, atol=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, ref_params[name].grad.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)
    ref_buffers = dict(ref.named_buffers())
    for name, b in ours.named_buffers():
        np.testing.assert_allclose(b, ref_buffers[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_overfits_a_small_batch():
    cnnkit.manual_seed(0)
    model = fashion_cnn()
    rng = np.random.default_rng(1)
    x = rng.random((16, 1, 28, 28), dtype=np.float32)
    y = np.arange(16) % 10
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        first = loss if first is None else first
        model.backward(loss_fn.backward())
        opt.step()
    assert loss < 0.2 * first
