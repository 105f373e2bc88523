"""cnnkit.nn.functional and Tensor operations: every differentiable op has a float64
finite-difference gradient check (every input, a random upstream gradient) and, where
PyTorch is installed, a parity test of values and gradients."""

import numpy as np
import pytest

import cnnkit
import cnnkit.nn.functional as F


def _rand(*shape, seed=0, away_from_zero=False):
    a = np.random.default_rng(seed).standard_normal(shape)
    if away_from_zero:        # kinks (ReLU, |x|, clamp) and ties stay out of the difference step
        a = np.where(np.abs(a) < 0.1, a + np.sign(a + 1e-12) * 0.2, a)
    return a


def _distinct(*shape, seed=0):
    """Values with no two equal in any window (max pooling / max without ties)."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) / n - 0.5) * 4


LABELS = np.array([1, 0, 2, 1])
TARGET = _rand(3, 4, seed=11)
PROBS = np.random.default_rng(5).random((3, 4))

# name, cnnkit function of Tensors, torch twin (or None), inputs
CASES = [
    ("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
     lambda t, x, w, b: t.nn.functional.conv2d(x, w, b, stride=2, padding=1),
     lambda: (_rand(2, 3, 7, 7), _rand(4, 3, 3, 3, seed=1), _rand(4, seed=2))),
    ("conv2d_groups_dilation", lambda x, w: F.conv2d(x, w, None, padding=2, dilation=2, groups=2),
     lambda t, x, w: t.nn.functional.conv2d(x, w, None, padding=2, dilation=2, groups=2),
     lambda: (_rand(2, 4, 6, 6), _rand(4, 2, 3, 3, seed=1))),
    ("linear", F.linear, "linear", lambda: (_rand(3, 5), _rand(4, 5, seed=1), _rand(4, seed=2))),
    ("max_pool2d", lambda x: F.max_pool2d(x, 2), lambda t, x: t.nn.functional.max_pool2d(x, 2),
     lambda: (_distinct(2, 3, 6, 6),)),
    ("max_pool2d_overlap", lambda x: F.max_pool2d(x, 3, 2, 1), lambda t, x: t.nn.functional.max_pool2d(x, 3, 2, 1),
     lambda: (_distinct(2, 2, 7, 7),)),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 3, 2, 1), lambda t, x: t.nn.functional.avg_pool2d(x, 3, 2, 1),
     lambda: (_rand(2, 3, 7, 7),)),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
     lambda t, x: t.nn.functional.adaptive_avg_pool2d(x, (2, 3)), lambda: (_rand(2, 3, 5, 7),)),
    ("relu", F.relu, "relu", lambda: (_rand(3, 4, away_from_zero=True),)),
    ("relu6", F.relu6, "relu6", lambda: (_rand(3, 4, away_from_zero=True) * 4,)),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.2), lambda t, x: t.nn.functional.leaky_relu(x, 0.2),
     lambda: (_rand(3, 4, away_from_zero=True),)),
    ("sigmoid", F.sigmoid, "sigmoid", lambda: (_rand(3, 4),)),
    ("tanh", F.tanh, "tanh", lambda: (_rand(3, 4),)),
    ("softmax", lambda x: F.softmax(x, dim=1), lambda t, x: t.nn.functional.softmax(x, dim=1), lambda: (_rand(3, 5),)),
    ("log_softmax", lambda x: F.log_softmax(x, dim=-1), lambda t, x: t.nn.functional.log_softmax(x, dim=-1),
     lambda: (_rand(3, 5),)),
    ("batch_norm_train", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
     lambda t, x, w, b: t.nn.functional.batch_norm(x, None, None, w, b, training=True),
     lambda: (_rand(4, 3, 2, 2), _rand(3, seed=1), _rand(3, seed=2))),
    ("batch_norm_eval", lambda x, w, b: F.batch_norm(x, np.full(3, 0.5), np.full(3, 2.0), w, b, training=False),
     lambda t, x, w, b: t.nn.functional.batch_norm(x, t.full((3,), 0.5, dtype=t.float64),
                                                    t.full((3,), 2.0, dtype=t.float64), w, b, training=False),
     lambda: (_rand(4, 3, 2, 2), _rand(3, seed=1), _rand(3, seed=2))),
    ("pad", lambda x: F.pad(x, (1, 2, 0, 1)), lambda t, x: t.nn.functional.pad(x, (1, 2, 0, 1)),
     lambda: (_rand(2, 3, 4, 4),)),
    ("cross_entropy", lambda x: F.cross_entropy(x, LABELS, label_smoothing=0.1),
     lambda t, x: t.nn.functional.cross_entropy(x, t.from_numpy(LABELS), label_smoothing=0.1),
     lambda: (_rand(4, 3),)),
    ("nll_loss", lambda x: F.nll_loss(x, LABELS, reduction="sum"),
     lambda t, x: t.nn.functional.nll_loss(x, t.from_numpy(LABELS), reduction="sum"), lambda: (_rand(4, 3),)),
    ("mse_loss", lambda x: F.mse_loss(x, TARGET), lambda t, x: t.nn.functional.mse_loss(x, t.from_numpy(TARGET)),
     lambda: (_rand(3, 4),)),
    ("l1_loss", lambda x: F.l1_loss(x, TARGET + 0.3), lambda t, x: t.nn.functional.l1_loss(x, t.from_numpy(TARGET + 0.3)),
     lambda: (_rand(3, 4),)),
    ("bce_with_logits", lambda x: F.binary_cross_entropy_with_logits(x, PROBS),
     lambda t, x: t.nn.functional.binary_cross_entropy_with_logits(x, t.from_numpy(PROBS)), lambda: (_rand(3, 4),)),
    ("flatten", lambda x: F.flatten(x, 1), lambda t, x: t.flatten(x, 1), lambda: (_rand(2, 3, 4),)),
    # Tensor arithmetic and methods
    ("add_broadcast", lambda a, b: a + b, lambda t, a, b: a + b, lambda: (_rand(3, 4), _rand(4, seed=1))),
    ("sub_mul_div", lambda a, b: (a - b) * a / (b * b + 1), lambda t, a, b: (a - b) * a / (b * b + 1),
     lambda: (_rand(3, 1), _rand(1, 4, seed=1))),
    ("pow_exp_log_sqrt", lambda a: (a * a + 1).sqrt().log() * a.exp() + a ** 3,
     lambda t, a: (a * a + 1).sqrt().log() * a.exp() + a ** 3, lambda: (_rand(3, 4),)),
    ("matmul_batched", lambda a, b: a @ b, lambda t, a, b: a @ b, lambda: (_rand(2, 3, 4), _rand(4, 5, seed=1))),
    ("matmul_vector", lambda a, b: a @ b, lambda t, a, b: a @ b, lambda: (_rand(3, 4), _rand(4, seed=1))),
    ("sum_mean_dims", lambda a: a.sum(dim=1, keepdim=True) * a.mean(dim=(0, 1)),
     lambda t, a: a.sum(dim=1, keepdim=True) * a.mean(dim=(0, 1)), lambda: (_rand(2, 3, 4),)),
    ("max_min_dim", lambda a: a.max(dim=1)[0] + a.min(dim=0).values.sum(),
     lambda t, a: a.max(dim=1)[0] + a.min(dim=0).values.sum(), lambda: (_distinct(3, 4),)),
    ("max_all", lambda a: a.max() * a, lambda t, a: a.max() * a, lambda: (_distinct(3, 4),)),
    ("view_permute_transpose", lambda a: a.view(4, 6).t().reshape(2, 12).permute(1, 0).unsqueeze(0).squeeze(),
     lambda t, a: a.view(4, 6).t().reshape(2, 12).permute(1, 0).unsqueeze(0).squeeze(), lambda: (_rand(2, 3, 4),)),
    ("index_slice", lambda a: a[1:, ::2] * 2 + a[0, 1], lambda t, a: a[1:, ::2] * 2 + a[0, 1], lambda: (_rand(3, 4),)),
    ("index_advanced", lambda a: a[[0, 2, 0]], lambda t, a: a[[0, 2, 0]], lambda: (_rand(3, 4),)),
    ("abs_clamp_var", lambda a: a.abs().clamp(0.3, 1.5) + a.var(dim=1, keepdim=True),
     lambda t, a: a.abs().clamp(0.3, 1.5) + a.var(dim=1, keepdim=True), lambda: (_rand(3, 4, away_from_zero=True),)),
]
CASES.append(("cat", lambda a, b: cnnkit.cat([a, b], 1), lambda t, a, b: t.cat([a, b], 1),
              lambda: (_rand(2, 3), _rand(2, 2, seed=1))))
CASES.append(("stack", lambda a, b: cnnkit.stack([a, b], 1), lambda t, a, b: t.stack([a, b], 1),
              lambda: (_rand(2, 3), _rand(2, 3, seed=1))))
CASES.append(("maximum_minimum", lambda a, b: cnnkit.maximum(a, b) * 2 + cnnkit.minimum(a, b),
              lambda t, a, b: t.maximum(a, b) * 2 + t.minimum(a, b), lambda: (_distinct(3, 4), _distinct(3, 4, seed=1))))
CASES.append(("expand_clone", lambda a: a.expand(2, 3, 4) * a.clone(), lambda t, a: a.expand(2, 3, 4) * a.clone(),
              lambda: (_rand(3, 1),)))
CASES.append(("where", lambda a, b: cnnkit.where(a > 0, a, b), lambda t, a, b: t.where(a > 0, a, b),
              lambda: (_rand(3, 4, away_from_zero=True), _rand(3, 4, seed=1))))
CASES.append(("pad_last_dim", lambda a: F.pad(a, (2, -1)), lambda t, a: t.nn.functional.pad(a, (2, -1)),
              lambda: (_rand(2, 3, 5),)))
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case):
    _, fn, _, inputs = case
    assert cnnkit.gradcheck(fn, *inputs(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parity_with_torch(case):
    torch = pytest.importorskip("torch")
    _, fn, twin, inputs = case
    if isinstance(twin, str):
        name = twin
        twin = lambda t, *a: getattr(t.nn.functional, name)(*a)  # noqa: E731
    arrays = inputs()
    ours = [cnnkit.tensor(a, dtype=cnnkit.float64, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out, ref = fn(*ours), twin(torch, *theirs)
    g = np.random.default_rng(9).standard_normal(tuple(ref.shape))
    out.backward(g)
    ref.backward(torch.from_numpy(g))
    # float64 both sides: differences are rounding of short sums (relative ~1e-15).
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_dropout_gradcheck():
    """The mask is drawn from cnnkit's generator, which gradcheck replays before every
    forward pass: the same mask for the analytic and the numeric gradients."""
    cnnkit.manual_seed(0)
    assert cnnkit.gradcheck(lambda x: F.dropout(x, 0.3), _rand(4, 5), rtol=1e-5, atol=1e-7)


def test_float32_stays_float32():
    x = cnnkit.randn(2, 3, 6, 6, requires_grad=True)
    w = cnnkit.randn(4, 3, 3, 3, requires_grad=True)
    y = F.log_softmax(F.linear(F.relu(F.conv2d(x, w)).flatten(1), cnnkit.randn(5, 64)) * 0.5 + 1, dim=1)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


def test_dropout_functional_training_flag():
    x = cnnkit.ones(1000)
    assert F.dropout(x, 0.5, training=False) is x
    y = F.dropout(x, 0.5)
    kept = y.numpy() != 0
    np.testing.assert_array_equal(y.numpy()[kept], 2.0)
    assert 350 < kept.sum() < 650     # Binomial(1000, 0.5): 10 standard deviations either side


def test_errors_name_the_function_and_argument():
    with pytest.raises(ValueError, match="conv2d: expected a 4-D input"):
        F.conv2d(cnnkit.ones(3, 4), cnnkit.ones(1, 1, 1, 1))
    with pytest.raises(TypeError, match="relu: expected a floating-point input"):
        F.relu(cnnkit.tensor([1, 2]))
    with pytest.raises(IndexError, match="softmax: dim 3"):
        F.softmax(cnnkit.ones(2, 2), dim=3)
    with pytest.raises(RuntimeError, match="invalid for input of size 6"):
        cnnkit.ones(2, 3).view(4, -1)
    with pytest.raises(RuntimeError, match=r"\+: shapes \(2, 3\) and \(4,\) cannot be broadcast together"):
        cnnkit.ones(2, 3) + cnnkit.ones(4)
    with pytest.raises(RuntimeError, match=r"backward: gradient of shape \(3,\) for a tensor of shape \(2,\)"):
        (cnnkit.ones(2, requires_grad=True) * 2).backward(cnnkit.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        cnnkit.ones(2).sum().backward()
