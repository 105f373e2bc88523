"""Loss functions with PyTorch's formulas, each with a hand-written gradient.

Usage::

    loss_fn = CrossEntropyLoss()
    loss = loss_fn(logits, labels)    # a 0-d Tensor ('mean' / 'sum') or a Tensor ('none')
    loss.backward()

Each loss computes its value (``_value``) and its gradient with respect to the input
(``_gradient``) on arrays; ``ops.loss.Loss`` records the pair in the graph.

On NumPy arrays the value is a Python float (an array for 'none') and
``loss_fn.backward(grad=None)`` returns d value / d input.
"""

from __future__ import annotations

import numpy as np

from ..autograd import grad_mode
from ..ops.activation import sigmoid
from ..ops.loss import Loss as LossOp
from .._tensor import Tensor
from .module import Module

__all__ = ["CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "BCEWithLogitsLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _log_softmax_and_softmax(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise log-softmax and softmax of (M, C) logits with one exp pass (max-shifted)."""
    shifted = z - z.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    total = probs.sum(axis=-1, keepdims=True)
    probs /= total
    shifted -= np.log(total)
    return shifted, probs


class _Loss(Module):
    """Base: ``__call__(pred, target)`` runs ``forward``; ``backward(grad=None)`` -> d/d pred."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self._cache = None

    def __call__(self, pred, target):
        if isinstance(pred, np.ndarray):
            return self._call_on_array(pred, target)
        return self.forward(pred, target)

    def forward(self, pred: Tensor, target) -> Tensor:
        """The loss as a Tensor (0-d for 'mean' / 'sum'); ``.backward()`` reaches ``pred``."""
        if not isinstance(pred, Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a Tensor or an array, got {type(pred).__name__}")
        return LossOp.apply(pred, target.data if isinstance(target, Tensor) else np.asarray(target), self)

    def _call_on_array(self, pred: np.ndarray, target, *_):
        """NumPy in: the value as a Python float ('mean' / 'sum') or an array ('none');
        ``backward(grad=None)`` then returns d value / d pred."""
        self._pred(pred)
        pt = Tensor._wrap(pred)
        pt.requires_grad = grad_mode.is_grad_enabled()
        out = self.forward(pt, target)
        self.__dict__["_array_io"] = (pt, out) if pt.requires_grad else None
        return out.data if self.reduction == "none" else float(out.item())

    def backward(self, grad=None) -> np.ndarray:
        """d value / d pred for the last NumPy call; ``grad``: the upstream gradient (a
        scalar multiplier for 'mean' / 'sum', an array of the loss's shape for 'none')."""
        io = self.__dict__.get("_array_io")
        if io is None:
            raise RuntimeError(f"{self._short_name()}: backward() called before forward() on arrays (with "
                               f"gradients enabled); with Tensors call loss.backward()")
        pt, out = io
        if self.reduction == "none":
            up = np.ones(out.shape, out.dtype) if grad is None else np.asarray(grad, dtype=out.dtype)
            if up.shape != tuple(out.shape):
                raise ValueError(
                    f"{type(self).__name__}(reduction='none').backward: grad must have the loss's shape "
                    f"{tuple(out.shape)}, got {up.shape}"
                )
        else:
            up = np.asarray(1.0 if grad is None else grad, dtype=out.dtype)
            if up.size != 1:
                raise ValueError(
                    f"{type(self).__name__}(reduction={self.reduction!r}).backward: grad must be a scalar, "
                    f"got shape {up.shape}"
                )
            up = up.reshape(())
        # As before the graph existed, backward may be asked again (another upstream
        # gradient) after one loss computation: the one-node graph is kept until the next.
        pt.grad = None
        out.backward(up, retain_graph=True)
        return pt.grad.data

    def _pred(self, pred) -> np.ndarray:
        pred = np.asarray(pred)
        if not np.issubdtype(pred.dtype, np.floating):
            raise TypeError(f"{type(self).__name__}: input (predictions) must be floating, got dtype {pred.dtype}")
        return pred

    def _same_shape_target(self, pred: np.ndarray, target) -> np.ndarray:
        target = np.asarray(target)
        if target.shape != pred.shape:
            raise ValueError(
                f"{type(self).__name__}: target shape {target.shape} does not match input shape {pred.shape}"
            )
        return target.astype(pred.dtype, copy=False)

    def _reduce(self, loss: np.ndarray):
        """The value returned to the user: the array for 'none', else a Python float."""
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return float(loss.sum())
        return float(loss.mean()) if loss.size else float("nan")

    def _upstream(self, grad, loss_shape: tuple[int, ...], dtype) -> np.ndarray | float:
        """Upstream gradient: an array of the loss's shape for 'none', else a scalar."""
        if self.reduction == "none":
            if grad is None:
                return np.ones(loss_shape, dtype)
            grad = np.asarray(grad, dtype=dtype)
            if grad.shape != tuple(loss_shape):
                raise ValueError(
                    f"{type(self).__name__}(reduction='none').backward: grad must have the loss's shape "
                    f"{tuple(loss_shape)}, got {grad.shape}"
                )
            return grad
        if grad is None:
            return 1.0
        grad = np.asarray(grad)
        if grad.size != 1:
            raise ValueError(
                f"{type(self).__name__}(reduction={self.reduction!r}).backward: grad must be a scalar, "
                f"got shape {grad.shape}"
            )
        return float(grad.reshape(()))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on raw logits (log-softmax + negative log-likelihood), as PyTorch.

    Args:
        weight: optional per-class weights, shape (C,). With 'mean' the result is divided by
            the sum of the weights of the targets (PyTorch's weighted mean).
        reduction: 'mean' (default), 'sum' or 'none'.
        label_smoothing: epsilon in [0, 1]: the target becomes (1 - eps) * one_hot + eps / C.
        ignore_index: targets equal to this value contribute nothing (and are not counted in
            the mean).

    Shape:
        input (N, C) or (N, C, d1, ...) logits, float; target (N,) or (N, d1, ...) integer class
        indices in [0, C), or class probabilities of the same shape as input (float).
        'none' returns (N,) or (N, d1, ...).

    Returns:
        ``loss(input, target)``: a Python float for 'mean' / 'sum', an array for 'none'.
        ``loss.backward()``: d loss / d input, same shape and dtype as input.
    """

    def __init__(self, weight=None, reduction: str = "mean", label_smoothing: float = 0.0,
                 ignore_index: int = -100):
        super().__init__(reduction)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        if weight is not None:
            weight = np.asarray(weight)
            if weight.ndim != 1 or not np.issubdtype(weight.dtype, np.number):
                raise ValueError(f"CrossEntropyLoss: weight must be a 1-D array of per-class weights, got shape {weight.shape}")
            weight = weight.astype(np.float32 if weight.dtype != np.float64 else np.float64)
        self.register_buffer("weight", weight)

    def _value(self, pred: np.ndarray, target: np.ndarray):
        pred = self._pred(pred)
        if pred.ndim == 1:  # one unbatched sample (C,)
            pred = pred[None]
            target = np.asarray(target).reshape(1, *np.shape(target))
            squeeze = True
        else:
            squeeze = False
        if pred.ndim < 2:
            raise ValueError(f"CrossEntropyLoss: input must be (N, C) or (N, C, d1, ...), got shape {pred.shape}")
        n_classes = pred.shape[1]
        target = np.asarray(target)
        w = None
        if self.weight is not None:
            if self.weight.shape != (n_classes,):
                raise ValueError(
                    f"CrossEntropyLoss: weight has shape {self.weight.shape} but the input has {n_classes} classes"
                )
            w = self.weight.astype(pred.dtype, copy=False)
        # Class axis last, so every row is one prediction; a view for (N, C) input.
        z = np.moveaxis(pred, 1, -1).reshape(-1, n_classes)
        eps = self.label_smoothing
        plain = None
        if w is None and eps == 0 and np.issubdtype(target.dtype, np.integer) \
                and target.shape == pred.shape[:1] + pred.shape[2:]:
            plain = self._forward_plain(z, target.reshape(-1), n_classes)
        if plain is not None:
            loss, cache, denom = plain
            loss_shape = target.shape
        elif np.issubdtype(target.dtype, np.floating):
            if target.shape != pred.shape:
                raise TypeError(
                    f"CrossEntropyLoss: target must hold integer class indices (int64) of shape "
                    f"{pred.shape[:1] + pred.shape[2:]}, got float dtype {target.dtype} with shape "
                    f"{target.shape} (float targets are class probabilities and need the input's shape "
                    f"{pred.shape}); convert labels with target.astype(np.int64)"
                )
            logp, probs = _log_softmax_and_softmax(z)
            loss, cache = self._forward_probs(logp, probs, target, w, n_classes, eps)
            loss_shape = pred.shape[:1] + pred.shape[2:]
            denom = loss.size
        elif np.issubdtype(target.dtype, np.integer):
            expected = pred.shape[:1] + pred.shape[2:]
            if target.shape != expected:
                raise ValueError(
                    f"CrossEntropyLoss: target shape {target.shape} does not match input shape {pred.shape}; "
                    f"expected class indices of shape {expected}"
                )
            logp, probs = _log_softmax_and_softmax(z)
            loss, cache, denom = self._forward_index(logp, probs, target.reshape(-1), w, n_classes, eps)
            loss_shape = expected
        else:
            raise TypeError(f"CrossEntropyLoss: target must hold integer class indices, got dtype {target.dtype}")
        self._cache = (cache, pred.shape, denom, squeeze)
        loss = loss.reshape(loss_shape)
        if self.reduction == "none":
            return loss[0] if squeeze else loss
        if self.reduction == "sum":
            return float(loss.sum())
        return float(loss.sum() / denom) if denom else float("nan")

    def _forward_plain(self, z, t, n_classes):
        """The common case, unweighted, no label smoothing, every label a class: the loss
        is log(sum exp(z - max)) - (z_t - max) per row, without the full log-softmax array
        and the per-row weight / mask arrays of the general path (batch 64 x 10: forward
        30 -> 23 us, backward 12 -> 7 us). Returns (loss, cache, count), or None when a
        label is out of range or ignored (the general path then checks, masks or raises)."""
        if t.size == 0:
            return None
        lo, hi = t.min(), t.max()
        if lo < 0 or hi >= n_classes:
            return None
        if 0 <= self.ignore_index < n_classes and (t == self.ignore_index).any():
            return None
        rows = np.arange(t.size)
        probs = z - z.max(axis=-1, keepdims=True)        # shifted logits, a new array
        picked = probs[rows, t]
        np.exp(probs, out=probs)
        total = probs.sum(axis=-1)
        probs /= total[:, None]
        loss = np.log(total)
        loss -= picked
        return loss, ("plain", probs, t), t.size

    def _forward_index(self, logp, probs, t, w, n_classes, eps):
        valid = t != self.ignore_index
        bad = valid & ((t < 0) | (t >= n_classes))
        if bad.any():
            raise ValueError(
                f"CrossEntropyLoss: target labels must be in [0, {n_classes}) (or ignore_index "
                f"{self.ignore_index}); found {np.unique(t[bad])[:10].tolist()}"
            )
        t_safe = np.where(valid, t, 0)
        rows = np.arange(t.size)
        # Per-row weight of the target class; 0 for ignored rows.
        wt = (w[t_safe] if w is not None else np.ones(t.size, logp.dtype)) * valid
        loss = -logp[rows, t_safe] * wt
        if eps > 0:
            smooth = -(logp @ w if w is not None else logp.sum(axis=-1)) * valid
            loss = (1 - eps) * loss + (eps / n_classes) * smooth
        # PyTorch's 'mean' divides by the summed target weights (the count when unweighted).
        denom = wt.sum()
        cache = ("index", probs, t_safe, wt, valid, w)
        return loss.astype(logp.dtype, copy=False), cache, denom

    def _forward_probs(self, logp, probs, target, w, n_classes, eps):
        t = np.moveaxis(target.astype(logp.dtype, copy=False), 1, -1).reshape(-1, n_classes)
        if eps > 0:
            t = t * (1 - eps) + eps / n_classes
        wt = t * w if w is not None else t
        loss = -(logp * wt).sum(axis=-1)
        return loss, ("probs", probs, wt)

    def _gradient(self, grad=None) -> np.ndarray:
        cache, shape, denom, squeeze = self._need_cache(self._cache)
        p = cache[1]
        dtype = p.dtype
        loss_shape = shape[:1] + shape[2:]
        if squeeze and self.reduction == "none":
            loss_shape = loss_shape[1:]
        up = self._upstream(grad, loss_shape, dtype)
        if self.reduction == "none":
            scale = up.reshape(-1, 1)
        elif self.reduction == "sum":
            scale = dtype.type(up)
        else:
            scale = dtype.type(up / denom) if denom else dtype.type(np.nan)
        if cache[0] == "plain":
            # d/dz of -log p_t: p - onehot(t), times the upstream scale.
            _, p, t = cache
            g = p * scale
            g[np.arange(t.size), t] -= scale if self.reduction != "none" else scale[:, 0]
            n = shape[0]
            g = np.moveaxis(g.reshape((n, *shape[2:], shape[1])), -1, 1)
            return g[0] if squeeze else g
        if cache[0] == "index":
            _, p, t_safe, wt, valid, w = cache
            eps = self.label_smoothing
            n_classes = p.shape[1]
            # d/dz of (1-eps) * w_t * nll + eps/C * sum_c w_c * (-log p_c):
            #   (1-eps) w_t (p - onehot) + eps/C (sum(w) p - w)
            total_w = w.sum() if w is not None else dtype.type(n_classes)
            coef = (1 - eps) * wt + (eps / n_classes) * total_w * valid
            g = p * coef[:, None].astype(dtype, copy=False)
            g[np.arange(g.shape[0]), t_safe] -= ((1 - eps) * wt).astype(dtype, copy=False)
            if eps > 0:
                w_row = w if w is not None else np.ones(n_classes, dtype)
                g -= (eps / n_classes) * valid[:, None] * w_row
        else:
            _, p, wt = cache
            g = p * wt.sum(axis=-1, keepdims=True) - wt
        g = (g * scale).astype(dtype, copy=False)
        n = shape[0]
        g = np.moveaxis(g.reshape((n, *shape[2:], shape[1])), -1, 1)
        return g[0] if squeeze else g

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        return ", ".join(parts)


class NLLLoss(_Loss):
    """Negative log-likelihood of log-probabilities (use after ``LogSoftmax``), as PyTorch.

    loss_n = -weight[t_n] * input[n, t_n];  d loss_n / d input[n, c] = -weight[t_n] if c == t_n, else 0.

    Args:
        weight: optional per-class weights, shape (C,); 'mean' divides by the sum of the
            weights of the targets.
        reduction: 'mean' (default), 'sum' or 'none'.
        ignore_index: targets equal to this value contribute nothing.

    Shape:
        input (N, C) or (N, C, d1, ...) log-probabilities; target (N,) or (N, d1, ...) int64.
    """

    def __init__(self, weight=None, reduction: str = "mean", ignore_index: int = -100):
        super().__init__(reduction)
        self.ignore_index = int(ignore_index)
        if weight is not None:
            weight = np.asarray(weight)
            if weight.ndim != 1:
                raise ValueError(f"NLLLoss: weight must be a 1-D array of per-class weights, got shape {weight.shape}")
            weight = weight.astype(np.float32 if weight.dtype != np.float64 else np.float64)
        self.register_buffer("weight", weight)

    def _value(self, pred: np.ndarray, target: np.ndarray):
        pred = self._pred(pred)
        target = np.asarray(target)
        squeeze = pred.ndim == 1
        if squeeze:
            pred, target = pred[None], target.reshape(1, *target.shape)
        expected = pred.shape[:1] + pred.shape[2:]
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"NLLLoss: target must hold integer class indices (int64), got dtype {target.dtype}")
        if target.shape != expected:
            raise ValueError(f"NLLLoss: target shape {target.shape} does not match input shape {pred.shape}; "
                             f"expected class indices of shape {expected}")
        n_classes = pred.shape[1]
        z = np.moveaxis(pred, 1, -1).reshape(-1, n_classes)
        t = target.reshape(-1)
        valid = t != self.ignore_index
        bad = valid & ((t < 0) | (t >= n_classes))
        if bad.any():
            raise ValueError(f"NLLLoss: target labels must be in [0, {n_classes}) (or ignore_index "
                             f"{self.ignore_index}); found {np.unique(t[bad])[:10].tolist()}")
        t_safe = np.where(valid, t, 0)
        w = None if self.weight is None else self.weight.astype(pred.dtype, copy=False)
        wt = ((w[t_safe] if w is not None else np.ones(t.size, pred.dtype)) * valid).astype(pred.dtype, copy=False)
        loss = (-z[np.arange(t.size), t_safe] * wt).reshape(expected)
        denom = wt.sum()
        self._cache = (t_safe, wt, pred.shape, denom, squeeze)
        if self.reduction == "none":
            return loss[0] if squeeze else loss
        if self.reduction == "sum":
            return float(loss.sum())
        return float(loss.sum() / denom) if denom else float("nan")

    def _gradient(self, grad=None) -> np.ndarray:
        t_safe, wt, shape, denom, squeeze = self._need_cache(self._cache)
        dtype = wt.dtype
        loss_shape = shape[:1] + shape[2:]
        if squeeze and self.reduction == "none":
            loss_shape = loss_shape[1:]
        up = self._upstream(grad, loss_shape, dtype)
        if self.reduction == "none":
            scale = np.asarray(up, dtype).reshape(-1)
        elif self.reduction == "sum":
            scale = dtype.type(up)
        else:
            scale = dtype.type(up / denom) if denom else dtype.type(np.nan)
        g = np.zeros((t_safe.size, shape[1]), dtype)
        g[np.arange(t_safe.size), t_safe] = -wt * scale
        n = shape[0]
        g = np.moveaxis(g.reshape((n, *shape[2:], shape[1])), -1, 1)
        return g[0] if squeeze else g

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class MSELoss(_Loss):
    """Mean squared error: (input - target)**2, reduced by 'mean' (default), 'sum' or 'none'.

    Shape:
        input and target of the same shape (no silent broadcasting).
    """

    def _value(self, pred: np.ndarray, target: np.ndarray):
        pred = self._pred(pred)
        diff = pred - self._same_shape_target(pred, target)
        self._cache = diff
        value = self._reduce(diff * diff)
        return value

    def _gradient(self, grad=None) -> np.ndarray:
        diff = self._need_cache(self._cache)
        up = self._upstream(grad, diff.shape, diff.dtype)
        scale = up if self.reduction == "none" else diff.dtype.type(up / (diff.size if self.reduction == "mean" else 1))
        return (2 * diff * scale).astype(diff.dtype, copy=False)


class L1Loss(_Loss):
    """Mean absolute error: |input - target| (gradient sign(input - target), 0 at ties as PyTorch).

    Shape:
        input and target of the same shape.
    """

    def _value(self, pred: np.ndarray, target: np.ndarray):
        pred = self._pred(pred)
        diff = pred - self._same_shape_target(pred, target)
        self._cache = diff
        value = self._reduce(np.abs(diff))
        return value

    def _gradient(self, grad=None) -> np.ndarray:
        diff = self._need_cache(self._cache)
        up = self._upstream(grad, diff.shape, diff.dtype)
        scale = up if self.reduction == "none" else diff.dtype.type(up / (diff.size if self.reduction == "mean" else 1))
        return (np.sign(diff) * scale).astype(diff.dtype, copy=False)


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross-entropy in one numerically stable step, as PyTorch.

    loss = weight * [pos_weight * y * softplus(-x) + (1 - y) * softplus(x)]

    Args:
        weight: optional weights broadcast to the input's shape.
        reduction: 'mean' (default), 'sum' or 'none'.
        pos_weight: optional weight of positive examples, broadcast along the last (class)
            dimension, shape (C,).

    Shape:
        input (*) logits and target (*) of the same shape, target in [0, 1] (float).
    """

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else np.asarray(weight, dtype=np.float32))
        self.register_buffer("pos_weight", None if pos_weight is None else np.asarray(pos_weight, dtype=np.float32))

    def _broadcast(self, name: str, arr, shape) -> np.ndarray | None:
        if arr is None:
            return None
        try:
            ok = np.broadcast_shapes(arr.shape, shape) == tuple(shape)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"BCEWithLogitsLoss: {name} of shape {arr.shape} cannot be broadcast to the input shape {shape}"
            )
        return arr

    def _value(self, pred: np.ndarray, target: np.ndarray):
        pred = self._pred(pred)
        y = self._same_shape_target(pred, target)
        dt = pred.dtype
        w = self._broadcast("weight", self.weight, pred.shape)
        pw = self._broadcast("pos_weight", self.pos_weight, pred.shape)
        w = None if w is None else w.astype(dt, copy=False)
        pw = None if pw is None else pw.astype(dt, copy=False)
        sp_pos = np.logaddexp(dt.type(0), pred)    # softplus(x)  = -log(1 - sigmoid(x))
        sp_neg = sp_pos - pred                      # softplus(-x) = -log(sigmoid(x))
        pos = y * sp_neg if pw is None else (pw * y) * sp_neg
        loss = pos + (1 - y) * sp_pos
        if w is not None:
            loss = loss * w
        self._cache = (pred, y, w, pw)
        value = self._reduce(loss.astype(dt, copy=False))
        return value

    def _gradient(self, grad=None) -> np.ndarray:
        pred, y, w, pw = self._need_cache(self._cache)
        dt = pred.dtype
        s = sigmoid(pred)
        # d/dx: (1 - y) * s - pw * y * (1 - s)
        py = y if pw is None else pw * y
        g = (1 - y) * s - py * (1 - s)
        if w is not None:
            g = g * w
        up = self._upstream(grad, pred.shape, dt)
        scale = up if self.reduction == "none" else dt.type(up / (pred.size if self.reduction == "mean" else 1))
        return np.broadcast_to(g * scale, pred.shape).astype(dt, copy=True)
