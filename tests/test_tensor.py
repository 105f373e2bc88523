"""cnnkit.Tensor and the top-level functions: PyTorch's names and semantics for what a
training script uses (shapes, conversions, 0-d tensors as numbers, factories, devices)."""

import numpy as np
import pytest

import cnnkit
import cnnkit.nn as nn


def test_creation_dtypes_follow_pytorch():
    assert cnnkit.tensor([1.0, 2.0]).dtype == np.float32          # Python floats: float32
    assert cnnkit.tensor([1, 2]).dtype == np.int64
    assert cnnkit.tensor(np.zeros(2, np.float64)).dtype == np.float64
    assert cnnkit.zeros(2, 3).shape == (2, 3) and cnnkit.ones((2, 3)).dtype == np.float32
    assert cnnkit.arange(5).dtype == np.int64 and cnnkit.arange(0.0, 1.0, 0.5).dtype == np.float32
    assert cnnkit.full((2,), 7).dtype == np.int64
    assert cnnkit.zeros_like(cnnkit.ones(2, dtype=cnnkit.float64)).dtype == np.float64
    a = np.arange(4.0)
    t = cnnkit.from_numpy(a)
    a[0] = 9.0
    assert t[0].item() == 9.0                                        # shares memory
    assert cnnkit.tensor(a)[0].item() == 9.0 and cnnkit.tensor(a).data is not a   # copies


def test_random_factories_follow_the_seed():
    cnnkit.manual_seed(3)
    a = cnnkit.randn(3, 4)
    cnnkit.manual_seed(3)
    np.testing.assert_array_equal(a.numpy(), cnnkit.randn(3, 4).numpy())
    assert cnnkit.rand(5).numpy().min() >= 0 and cnnkit.randint(0, 3, (10,)).numpy().max() < 3


def test_shape_methods():
    t = cnnkit.arange(24).float()
    assert t.view(2, 3, 4).shape == (2, 3, 4) and t.view(-1, 6).size() == (4, 6)
    assert t.view(2, 12).size(0) == 2 and t.view(2, 12).size(-1) == 12
    assert t.view(2, 3, 4).dim() == 3 and t.numel() == 24 and len(t.view(4, 6)) == 4
    assert t.view(2, 3, 4).flatten(1).shape == (2, 12) and cnnkit.flatten(t.view(2, 3, 4), 1).shape == (2, 12)
    assert t.view(2, 3, 4).permute(2, 0, 1).shape == (4, 2, 3)
    assert t.view(2, 3, 4).transpose(0, 2).shape == (4, 3, 2) and t.view(4, 6).T.shape == (6, 4)
    assert t.view(1, 24, 1).squeeze().shape == (24,) and t.unsqueeze(0).shape == (1, 24)
    assert t.view_as(cnnkit.zeros(4, 6)).shape == (4, 6)
    assert t.view(2, 12)[1, 2:5].tolist() == [14.0, 15.0, 16.0]
    with pytest.raises(RuntimeError, match=r"shape \[5, -1\] is invalid for input of size 24"):
        t.view(5, -1)


def test_arithmetic_with_numbers_and_arrays_in_both_orders():
    t = cnnkit.tensor([1.0, 2.0])
    for value in (2 + t, t + 2, 2 * t, t * np.float32(2), np.array([1.0, 1.0], np.float32) + t, t - 1, 1 - t,
                  t / 2, 2 / t, t ** 2, 2 ** t, -t, t @ t):
        assert isinstance(value, cnnkit.Tensor) and value.dtype == np.float32
    assert (2 ** t).tolist() == [2.0, 4.0] and (1 - t).tolist() == [0.0, -1.0] and (t @ t).item() == 5.0


def test_reductions_and_comparisons():
    t = cnnkit.tensor([[1.0, 5.0, 3.0], [4.0, 2.0, 6.0]])
    assert t.sum().item() == 21.0 and t.mean(dim=1).tolist() == [3.0, 4.0]
    assert t.sum(dim=0, keepdim=True).shape == (1, 3)
    values, indices = t.max(dim=1)
    assert values.tolist() == [5.0, 6.0] and indices.tolist() == [1, 2]
    assert cnnkit.max(t, 1)[1].tolist() == [1, 2] and t.max().item() == 6.0 and t.min().item() == 1.0
    assert t.argmax(dim=1).tolist() == [1, 2] and cnnkit.argmax(t).item() == 5 and t.argmin(1).tolist() == [0, 1]
    pred = t.argmax(dim=1, keepdim=True)
    target = cnnkit.tensor([1, 0])
    assert pred.eq(target.view_as(pred)).sum().item() == 1
    assert (t > 2).sum().item() == 4 and (t == 5).any().item()


def test_zero_dim_tensors_work_as_numbers():
    loss = cnnkit.tensor(0.25)
    assert float(loss) == 0.25 and f"{loss:.3f}" == "0.250" and "%.2f" % loss == "0.25"
    i = cnnkit.tensor(2)
    assert int(i) == 2 and ["a", "b", "c"][i] == "c" and i % 2 == 0
    assert round(loss.item(), 2) == 0.25 and isinstance(loss.item(), float) and isinstance(i.item(), int)
    with pytest.raises(ValueError, match="only one element tensors"):
        cnnkit.ones(2).item()


def test_conversions_and_devices():
    t = cnnkit.tensor([1.5, -2.5])
    assert t.long().dtype == np.int64 and t.float().dtype == np.float32 and t.double().dtype == np.float64
    assert t.to(cnnkit.float64).dtype == np.float64 and t.to("cpu") is t and t.cpu() is t
    assert t.to(cnnkit.device("cpu"), cnnkit.float64).dtype == np.float64
    assert str(t.device) == "cpu" and t.device == cnnkit.device("cpu")
    assert np.asarray(t) is t.data and t.numpy() is t.data and t.tolist() == [1.5, -2.5]
    w = cnnkit.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        w.numpy()
    assert w.detach().numpy() is w.data
    assert not cnnkit.cuda.is_available() and not cnnkit.backends.cudnn.enabled


def test_module_apply_to_and_containers():
    seen = []
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))

    def init(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.5)
            nn.init.zeros_(m.bias)
        seen.append(type(m).__name__)

    model.apply(init)
    assert seen == ["Linear", "ReLU", "Linear", "Sequential"]
    assert (model[0].weight.detach().numpy() == 0.5).all()
    assert model.to(cnnkit.float64)[0].weight.dtype == np.float64
    layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    heads = nn.ModuleDict({"a": nn.Linear(2, 1)})
    holder = nn.Module()
    holder.layers, holder.heads = layers, heads
    assert list(holder.state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                                         "heads.a.weight", "heads.a.bias"]
    assert len(layers) == 2 and "a" in heads and isinstance(layers[1], nn.Linear)


def test_user_dataset_is_collated_and_loader_yields_tensors():
    from cnnkit.utils.data import DataLoader, Dataset, TensorDataset, random_split

    class Squares(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return np.full((1, 2, 2), i, np.float32), i % 3

    loader = DataLoader(Squares(), batch_size=4, num_workers=2)
    x, y = next(iter(loader))
    assert isinstance(x, cnnkit.Tensor) and x.shape == (4, 1, 2, 2) and x.dtype == np.float32
    assert y.tolist() == [0, 1, 2, 0] and y.dtype == np.int64
    x, y = next(iter(loader))
    assert x.to("cpu") is x
    ds = TensorDataset(cnnkit.arange(6).float().view(6, 1), cnnkit.arange(6))
    assert [b[1].tolist() for b in DataLoader(ds, batch_size=4)] == [[0, 1, 2, 3], [4, 5]]
    parts = random_split(ds, [4, 2], seed=0)
    assert sorted(len(p) for p in parts) == [2, 4]
