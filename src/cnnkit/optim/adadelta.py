"""Adadelta: step sizes from running averages of squared gradients and squared updates."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .optimizer import Optimizer, _check_range, decayed_gradient
from ._slices import update_slices

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    """Adadelta, PyTorch's formulation (``torch.optim.Adadelta``).

    For each parameter ``p`` with gradient ``g`` (``-g`` when ``maximize``)::

        g = g + weight_decay * p
        v = rho * v + (1 - rho) * g * g
        delta = sqrt(u + eps) / sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        p = p - lr * delta

    Args:
        params: parameters or parameter groups (see ``Optimizer``).
        lr: scales the update (default 1.0).
        rho: smoothing constant of both running averages (default 0.9).
        eps: added inside both square roots (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        maximize: ascend instead of descend.

    State per parameter: ``step`` (int), ``square_avg`` (``v``) and ``acc_delta`` (``u``).

    Shape:
        Updates each ``Parameter.data`` in place; dtypes are kept (float32 stays float32).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        _check_range("Adadelta", "rho", group["rho"], 0.0, 1.0)
        _check_range("Adadelta", "eps", group["eps"], 0.0)
        _check_range("Adadelta", "weight_decay", group["weight_decay"], 0.0)

    def _update(self, group: dict[str, Any], params: list) -> None:
        # Python floats stay "weak" in NumPy 2 arithmetic: float32 arrays stay float32.
        lr = float(group["lr"])
        rho = float(group["rho"])
        eps = float(group["eps"])
        wd = float(group["weight_decay"])
        maximize = bool(group["maximize"])
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = 0
                state["square_avg"] = np.zeros_like(p.data)
                state["acc_delta"] = np.zeros_like(p.data)
            state["step"] += 1

            for grad, data, v, u, t0, t1 in update_slices(self, p, p.grad.data, p.data, state["square_avg"],
                                                          state["acc_delta"]):
                _update_slice(data, grad, v, u, t0, t1, lr, rho, eps, wd, maximize)


def _update_slice(p, grad, v, u, t0, t1, lr, rho, eps, wd, maximize) -> None:
    """Adadelta on one slice, in place on ``p``, ``v`` (square_avg) and ``u`` (acc_delta);
    ``grad`` is only read; ``t0`` / ``t1``: scratch slices of the same length."""
    g = decayed_gradient(p, grad, wd, maximize, out=t0)  # grad itself when neither applies
    delta = t1
    np.multiply(g, g, out=delta)
    delta *= 1.0 - rho
    v *= rho
    v += delta
    np.add(v, eps, out=delta)
    np.sqrt(delta, out=delta)
    np.divide(g, delta, out=delta)
    # g is no longer read: t0 (which may hold it) takes sqrt(u + eps).
    np.add(u, eps, out=t0)
    np.sqrt(t0, out=t0)
    delta *= t0

    np.multiply(delta, delta, out=t0)
    t0 *= 1.0 - rho
    u *= rho
    u += t0
    if lr != 1.0:
        delta *= lr
    p -= delta
