"""Losses: gradients, PyTorch parity (weights, label smoothing, ignore_index, reductions), errors."""

import warnings

import numpy as np
import pytest

from cnnkit.gradient_check import gradcheck_loss
from cnnkit.nn import BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss

RTOL, ATOL = 1e-4, 1e-5
REDUCTIONS = ["mean", "sum", "none"]
C = 4
CLASS_WEIGHT = np.array([0.5, 2.0, 1.0, 1.5], np.float32)


def _ce_data(shape, seed=0, ignore=None):
    """Logits of ``shape`` (N, C, ...) and labels; some labels set to ``ignore``."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 2
    labels = rng.integers(0, shape[1], (shape[0],) + tuple(shape[2:]))
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    return logits, labels


CE_CONFIGS = [
    dict(weight=w, label_smoothing=ls, ignore_index=ii)
    for w in (None, CLASS_WEIGHT) for ls in (0.0, 0.2) for ii in (-100, 1)
]
CE_IDS = [f"w={'y' if c['weight'] is not None else 'n'}-ls={c['label_smoothing']}-ii={c['ignore_index']}"
          for c in CE_CONFIGS]


@pytest.mark.parametrize("shape", [(5, C), (2, C, 3, 2)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("config", CE_CONFIGS, ids=CE_IDS)
def test_cross_entropy_gradcheck(config, reduction, shape):
    loss = CrossEntropyLoss(reduction=reduction, **config)
    logits, labels = _ce_data(shape, ignore=config["ignore_index"] if config["ignore_index"] != -100 else None)
    assert gradcheck_loss(loss, logits, labels)


@pytest.mark.parametrize("shape", [(6, C), (2, C, 3, 2)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("config", CE_CONFIGS, ids=CE_IDS)
def test_cross_entropy_matches_torch(config, reduction, shape):
    torch = pytest.importorskip("torch")
    ignore = config["ignore_index"] if config["ignore_index"] != -100 else None
    logits, labels = _ce_data(shape, seed=1, ignore=ignore)
    logits = logits.astype(np.float32)
    w = config["weight"]
    ref = torch.nn.CrossEntropyLoss(weight=None if w is None else torch.from_numpy(w), reduction=reduction,
                                    label_smoothing=config["label_smoothing"], ignore_index=config["ignore_index"])
    xt = torch.tensor(logits, requires_grad=True)
    lt = ref(xt, torch.from_numpy(labels))
    up = np.random.default_rng(2).standard_normal(lt.shape).astype(np.float32) if reduction == "none" else None
    lt.backward(torch.from_numpy(up) if up is not None else None)
    ours = CrossEntropyLoss(reduction=reduction, **config)
    value = ours(logits, labels)
    grad = ours.backward(up)
    if reduction == "none":
        assert value.dtype == np.float32 and value.shape == tuple(lt.shape)
        np.testing.assert_allclose(value, lt.detach().numpy(), rtol=RTOL, atol=ATOL)
    else:
        assert isinstance(value, float)
        np.testing.assert_allclose(value, lt.item(), rtol=RTOL, atol=ATOL)
    assert grad.dtype == np.float32 and grad.shape == logits.shape
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probability_targets(reduction, label_smoothing):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, C)).astype(np.float32)
    probs = rng.dirichlet(np.ones(C), 5).astype(np.float32)
    ours = CrossEntropyLoss(weight=CLASS_WEIGHT, reduction=reduction, label_smoothing=label_smoothing)
    assert gradcheck_loss(ours, logits, probs)
    ref = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(CLASS_WEIGHT), reduction=reduction,
                                    label_smoothing=label_smoothing)
    xt = torch.tensor(logits, requires_grad=True)
    lt = ref(xt, torch.from_numpy(probs))
    (lt.sum() if reduction == "none" else lt).backward()
    value = ours(logits, probs)
    grad = ours.backward(np.ones(5, np.float32) if reduction == "none" else None)
    np.testing.assert_allclose(value, lt.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], np.float32)
    loss = CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = loss(logits, np.array([2, 0]))
        grad = loss.backward()
    np.testing.assert_allclose(value, (2e4 + np.log(3)) / 2, rtol=1e-6)
    assert np.all(np.isfinite(grad))


def test_cross_entropy_unbatched_input():
    torch = pytest.importorskip("torch")
    logits = np.array([0.5, -1.0, 2.0], np.float32)
    ours = CrossEntropyLoss()
    xt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.CrossEntropyLoss()(xt, torch.tensor(2))
    lt.backward()
    np.testing.assert_allclose(ours(logits, np.array(2)), lt.item(), rtol=RTOL)
    np.testing.assert_allclose(ours.backward(), xt.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_cross_entropy_errors():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="CrossEntropyLoss: target must hold integer class indices.*float32"):
        CrossEntropyLoss()(logits, np.array([0.0, 1.0, 2.0], np.float32))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: target labels must be in \[0, 4\).*\[4, 7\]"):
        CrossEntropyLoss()(logits, np.array([0, 4, 7]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: target labels must be in \[0, 4\).*\[-1\]"):
        CrossEntropyLoss()(logits, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: target shape \(2,\) does not match input shape \(3, 4\)"):
        CrossEntropyLoss()(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="CrossEntropyLoss: weight has shape \\(3,\\) but the input has 4 classes"):
        CrossEntropyLoss(weight=np.ones(3))(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.*before forward"):
        CrossEntropyLoss().backward()
    loss = CrossEntropyLoss(reduction="none")
    loss(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"grad must have the loss's shape \(3,\), got \(2,\)"):
        loss.backward(np.ones(2))


# ---------------------------------------------------------------------- regression / binary losses
def _pair(shape=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cls", [MSELoss, L1Loss])
def test_regression_losses_gradcheck_and_torch(cls, reduction):
    torch = pytest.importorskip("torch")
    pred, target = _pair()
    assert gradcheck_loss(cls(reduction=reduction), pred, target)
    pred32, target32 = pred.astype(np.float32), target.astype(np.float32)
    xt = torch.tensor(pred32, requires_grad=True)
    lt = getattr(torch.nn, cls.__name__)(reduction=reduction)(xt, torch.from_numpy(target32))
    up = np.random.default_rng(1).standard_normal(pred.shape).astype(np.float32)
    lt.backward(torch.from_numpy(up) if reduction == "none" else None)
    ours = cls(reduction=reduction)
    value = ours(pred32, target32)
    grad = ours.backward(up if reduction == "none" else None)
    np.testing.assert_allclose(value, lt.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL)


BCE_CONFIGS = [dict(), dict(pos_weight=np.array([1.0, 3.0, 0.5], np.float32)),
               dict(weight=np.array([0.2, 1.0, 2.0], np.float32), pos_weight=np.array([2.0, 1.0, 4.0], np.float32)),
               dict(weight=np.random.default_rng(9).uniform(0.5, 2, (4, 3)).astype(np.float32))]
BCE_IDS = ["plain", "pos_weight", "weight+pos_weight", "full_weight"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("config", BCE_CONFIGS, ids=BCE_IDS)
def test_bce_with_logits_gradcheck_and_torch(config, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 3)) * 3
    target = rng.uniform(0, 1, (4, 3))
    target[0] = [0, 1, 1]
    assert gradcheck_loss(BCEWithLogitsLoss(reduction=reduction, **config), logits, target)
    logits32, target32 = logits.astype(np.float32), target.astype(np.float32)
    ref = torch.nn.BCEWithLogitsLoss(reduction=reduction, **{k: torch.from_numpy(v) for k, v in config.items()})
    xt = torch.tensor(logits32, requires_grad=True)
    lt = ref(xt, torch.from_numpy(target32))
    up = rng.standard_normal((4, 3)).astype(np.float32)
    lt.backward(torch.from_numpy(up) if reduction == "none" else None)
    ours = BCEWithLogitsLoss(reduction=reduction, **config)
    value = ours(logits32, target32)
    grad = ours.backward(up if reduction == "none" else None)
    np.testing.assert_allclose(value, lt.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_bce_is_stable_for_huge_logits():
    loss = BCEWithLogitsLoss(reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = loss(np.array([1e4, -1e4, 1e4], np.float32), np.array([1.0, 0.0, 0.0], np.float32))
        grad = loss.backward()
    np.testing.assert_allclose(value, [0, 0, 1e4], rtol=1e-6)
    np.testing.assert_allclose(grad, [0, 0, 1], atol=1e-7)


@pytest.mark.parametrize("cls", [MSELoss, L1Loss, BCEWithLogitsLoss])
def test_shape_mismatch_is_a_clear_error(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: target shape \(4,\) does not match input shape \(4, 1\)"):
        cls()(np.zeros((4, 1), np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=f"{cls.__name__}: input .* must be floating"):
        cls()(np.zeros(4, np.int64), np.zeros(4, np.float32))


def test_bce_weight_shape_error_and_buffers():
    with pytest.raises(ValueError, match=r"BCEWithLogitsLoss: pos_weight of shape \(2,\) cannot be broadcast"):
        BCEWithLogitsLoss(pos_weight=np.ones(2))(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32))
    # weights are buffers, as in PyTorch
    assert list(BCEWithLogitsLoss(pos_weight=np.ones(3)).state_dict()) == ["pos_weight"]
    assert list(CrossEntropyLoss(weight=np.ones(3)).state_dict()) == ["weight"]


def test_scalar_upstream_grad_scales_and_repr():
    loss = MSELoss()
    pred, target = _pair()
    loss(pred, target)
    np.testing.assert_allclose(loss.backward(3.0), 3.0 * loss.backward(), rtol=1e-12)
    with pytest.raises(ValueError, match="grad must be a scalar"):
        loss.backward(np.ones(2))
    assert repr(CrossEntropyLoss(label_smoothing=0.1)) == "CrossEntropyLoss(reduction='mean', label_smoothing=0.1)"


@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2, 2), (5,)], ids=["NC", "NCHW", "unbatched"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_plain_path_equals_general_path(shape, reduction, ignore_index, monkeypatch):
    """Unweighted, unsmoothed integer targets take a shorter path (no log-softmax array);
    it gives the general path's loss and gradient, in float32 and float64. An in-range
    ignore_index that occurs in the targets falls back to the general path."""
    rng = np.random.default_rng(11)
    n_classes = shape[1] if len(shape) > 1 else shape[0]
    labels_shape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    for dtype in (np.float32, np.float64):
        logits = (rng.standard_normal(shape) * 3).astype(dtype)
        labels = np.asarray(rng.integers(0, n_classes, labels_shape))
        labels = np.where(labels == 2, 3, labels)     # no label equals ignore_index 2
        up = rng.standard_normal(labels_shape).astype(dtype) if reduction == "none" else 0.7
        plain = CrossEntropyLoss(reduction=reduction, ignore_index=ignore_index)
        value = plain(logits, labels)
        grad = plain.backward(up)
        assert plain._array_io[1].grad_fn.ctx.cache[0][0] == "plain"
        general = CrossEntropyLoss(reduction=reduction, ignore_index=ignore_index)
        monkeypatch.setattr(general, "_forward_plain", lambda *a: None)
        ref_value = general(logits, labels)
        ref_grad = general.backward(up)
        assert general._array_io[1].grad_fn.ctx.cache[0][0] == "index"
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(value, ref_value, **tol)
        assert grad.dtype == dtype and grad.shape == logits.shape
        np.testing.assert_allclose(grad, ref_grad, **tol)
        if reduction == "none":
            assert value.dtype == dtype and value.shape == labels_shape
    if ignore_index == 2 and labels_shape:
        labels = labels.copy()
        labels.reshape(-1)[0] = 2
        loss = CrossEntropyLoss(reduction=reduction, ignore_index=2)
        loss(logits, labels)
        assert loss._array_io[1].grad_fn.ctx.cache[0][0] == "index"
