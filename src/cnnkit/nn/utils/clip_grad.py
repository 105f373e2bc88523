"""Gradient clipping in place, as ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` do it."""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..._tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _gradients(fn: str, parameters: Tensor | Iterable[Tensor]) -> list[np.ndarray]:
    """The gradient arrays of ``parameters`` (a Tensor or an iterable of them), None skipped.

    The arrays are the gradients' own storage, so writing into them changes ``p.grad``."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    elif isinstance(parameters, np.ndarray) or not isinstance(parameters, Iterable):
        raise TypeError(f"{fn}: parameters must be a Tensor or an iterable of Tensors, "
                        f"got {type(parameters).__name__}")
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and not parameters:
            warnings.warn(f"{fn}: `parameters` is an empty generator, no gradient clipping will occur.",
                          stacklevel=3)
    grads = []
    for i, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise TypeError(f"{fn}: parameters[{i}] must be a Tensor (e.g. a Parameter), got {type(p).__name__}")
        if p.grad is not None:
            grads.append(np.asarray(p.grad))
    return grads


def _vector_norm(x: np.ndarray, ord: float) -> np.generic:
    """``torch.linalg.vector_norm(x, ord)`` of all elements, as a scalar of ``x``'s dtype."""
    flat = x.reshape(-1)
    kind = flat.dtype.type
    if flat.size == 0:
        return kind(0)
    if ord == 2:
        return np.sqrt(np.dot(flat, flat))  # BLAS: no temporary, no upcast
    if ord == math.inf:
        return kind(np.max(np.abs(flat)))
    if ord == -math.inf:
        return kind(np.min(np.abs(flat)))
    if ord == 0:
        return kind(np.count_nonzero(flat))
    if ord == 1:
        return kind(np.sum(np.abs(flat)))
    return kind(np.sum(np.abs(flat) ** kind(ord)) ** kind(1.0 / ord))


def _number(fn: str, name: str, value: Any) -> float:
    """``value`` as a float, or a one-line error naming the argument."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a number, got {value!r}") from None


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Scale the gradients in place so that their total norm is at most ``max_norm``.

    The total norm is the ``norm_type``-norm of the vector of every gradient's own norm
    (the norm of all gradients concatenated). When ``clip_coef = max_norm / (total_norm + 1e-6)``
    is below 1, every gradient is multiplied by it; otherwise they are left as they are.
    A NaN or infinite total norm is not hidden: with ``error_if_nonfinite=False`` the gradients
    are scaled by the resulting coefficient (NaN stays NaN), as PyTorch does.

    Args:
        parameters: a Tensor or an iterable of Tensors (``model.parameters()``); those whose
            ``grad`` is None are skipped.
        max_norm: the largest total norm kept.
        norm_type: the p of the p-norm; ``float("inf")`` (or ``"inf"``) for the largest
            absolute value (default 2.0).
        error_if_nonfinite: raise a RuntimeError when the total norm is NaN or infinite.

    Returns:
        The total norm before clipping, a 0-d Tensor (of the gradients' dtype; float32 0.0
        when no parameter has a gradient).

    Shape:
        Any; every gradient keeps its shape and dtype.
    """
    fn = "clip_grad_norm_"
    max_norm = _number(fn, "max_norm", max_norm)
    norm_type = _number(fn, "norm_type", norm_type)
    grads = _gradients(fn, parameters)
    if not grads:
        return Tensor._wrap(np.array(0.0, dtype=np.float32))
    norms = np.array([_vector_norm(g, norm_type) for g in grads])  # dtypes promote as torch.stack's
    total = _vector_norm(norms, norm_type)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"{fn}: the total norm of order {norm_type} of the gradients is non-finite ({total}), so it "
            "cannot be clipped; pass error_if_nonfinite=False to scale the gradients by it anyway")
    kind = total.dtype.type
    # In the norm's dtype, as PyTorch computes it (a float32 coefficient for float32 gradients).
    clip_coef = kind(max_norm) / (total + kind(1e-6))
    if not clip_coef >= 1.0:  # also when NaN: NaN gradients are reported, not hidden
        for g in grads:
            g *= clip_coef
    return Tensor._wrap(np.asarray(total))


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient in place to ``[-clip_value, clip_value]``.

    Args:
        parameters: a Tensor or an iterable of Tensors; those whose ``grad`` is None are skipped.
        clip_value: the largest absolute value kept (NaN gradients stay NaN).

    Shape:
        Any; every gradient keeps its shape and dtype.
    """
    fn = "clip_grad_value_"
    clip_value = _number(fn, "clip_value", clip_value)
    for g in _gradients(fn, parameters):
        np.clip(g, -clip_value, clip_value, out=g)
