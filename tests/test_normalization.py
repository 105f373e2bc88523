"""BatchNorm1d / BatchNorm2d: gradients, PyTorch parity in train and eval mode, buffers, errors."""

import numpy as np
import pytest

from cnnkit.gradient_check import gradcheck
from cnnkit.nn import BatchNorm1d, BatchNorm2d

RTOL, ATOL = 1e-4, 1e-5

# (our class, torch class name, input shape)
CASES = [
    (BatchNorm1d, "BatchNorm1d", (6, 3)),
    (BatchNorm1d, "BatchNorm1d", (4, 3, 5)),
    (BatchNorm2d, "BatchNorm2d", (3, 3, 4, 5)),
]
IDS = ["bn1d_2d_input", "bn1d_3d_input", "bn2d"]


def _random_affine(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.weight.data[...] = rng.uniform(0.5, 1.5, layer.num_features)
    layer.bias.data[...] = rng.standard_normal(layer.num_features)
    return layer


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case, affine, mode):
    cls, _, shape = case
    layer = cls(3, affine=affine)
    if affine:
        _random_affine(layer)
    layer.running_mean[...] = [0.1, -0.2, 0.3]
    layer.running_var[...] = [0.5, 1.5, 2.0]
    layer.train(mode == "train")
    x = np.random.default_rng(1).standard_normal(shape) * 2 + 1
    assert gradcheck(layer, x)


def test_gradcheck_without_running_stats_uses_batch_stats_in_eval():
    layer = _random_affine(BatchNorm2d(3, track_running_stats=False)).eval()
    assert gradcheck(layer, np.random.default_rng(2).standard_normal((2, 3, 3, 3)))


def _torch_copy(torch, ours, tname, **kwargs):
    ref = getattr(torch.nn, tname)(ours.num_features, **kwargs)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    return ref


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_torch_train_steps_then_eval(case, momentum):
    torch = pytest.importorskip("torch")
    cls, tname, shape = case
    ours = _random_affine(cls(3, momentum=momentum, eps=1e-3))
    ref = _torch_copy(torch, ours, tname, momentum=momentum, eps=1e-3)
    rng = np.random.default_rng(3)
    for mode in ("train", "train", "train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        ours.zero_grad()
        ref.zero_grad()
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.from_numpy(g))
        y = ours(x)
        gx = ours.backward(g)
        assert y.dtype == np.float32 and gx.dtype == np.float32
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ours.bias.grad, ref.bias.grad.numpy(), rtol=RTOL, atol=ATOL)
        for key, val in ref.state_dict().items():
            mine = ours.state_dict()[key]
            assert mine.dtype == val.numpy().dtype, key
            np.testing.assert_allclose(mine, val.numpy(), rtol=RTOL, atol=ATOL, err_msg=key)
    assert int(ours.num_batches_tracked) == 3


def test_state_dict_keys_and_buffers_match_torch():
    torch = pytest.importorskip("torch")
    ours, ref = BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    assert list(ours.state_dict()) == list(ref.state_dict())
    sd = ours.state_dict()
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    assert sd["running_var"].dtype == np.float32
    np.testing.assert_array_equal(sd["weight"], 1)
    np.testing.assert_array_equal(sd["bias"], 0)
    assert list(BatchNorm1d(2, affine=False).state_dict()) == list(torch.nn.BatchNorm1d(2, affine=False).state_dict())
    assert list(BatchNorm1d(2, track_running_stats=False).state_dict()) == ["weight", "bias"]


def test_running_var_is_unbiased_and_eval_uses_it():
    layer = BatchNorm1d(1, momentum=1.0, affine=False)
    x = np.array([[1.0], [2.0], [3.0], [6.0]], np.float32)
    y = layer(x)
    np.testing.assert_allclose(layer.running_mean, [3.0])
    np.testing.assert_allclose(layer.running_var, [np.var(x, ddof=1)], rtol=1e-6)
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 3) / np.sqrt(np.var(x) + 1e-5), rtol=1e-5)
    layer.eval()
    np.testing.assert_allclose(layer(x)[:, 0], (x[:, 0] - 3) / np.sqrt(np.var(x, ddof=1) + 1e-5), rtol=1e-5)
    assert int(layer.num_batches_tracked) == 1  # eval does not count


def test_float64_after_double_and_int_buffer_kept():
    layer = BatchNorm2d(2).double()
    y = layer(np.random.default_rng(0).standard_normal((2, 2, 3, 3)))
    assert y.dtype == np.float64 and layer.running_mean.dtype == np.float64
    assert layer.num_batches_tracked.dtype == np.int64


def test_frozen_and_needs_input_grad():
    layer = _random_affine(BatchNorm2d(3))
    layer.weight.requires_grad = False
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    g = np.ones_like(x)
    g.flags.writeable = False
    layer(x)
    assert layer.backward(g).shape == x.shape
    assert layer.weight.grad is None and layer.bias.grad is not None
    layer.needs_input_grad = False
    layer(x)
    assert layer.backward(g) is None


def test_errors():
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): expected \(N, C, H, W\) input, got shape \(2, 3\)"):
        BatchNorm2d(3)(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): expected 3 channels in dim 1.*\(2, 4\)"):
        BatchNorm1d(3)(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm1d(3)(np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="BatchNorm1d.*floating"):
        BatchNorm1d(3)(np.ones((2, 3), np.int64))
    with pytest.raises(RuntimeError, match="before forward"):
        BatchNorm1d(3).backward(np.ones((2, 3), np.float32))
    # one sample is fine in eval mode (running statistics)
    assert BatchNorm1d(3).eval()(np.ones((1, 3), np.float32)).shape == (1, 3)


def test_repr():
    assert repr(BatchNorm2d(8)) == "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
