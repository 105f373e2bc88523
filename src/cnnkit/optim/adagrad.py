"""Adagrad: per-element step sizes from the running sum of squared gradients."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .optimizer import Optimizer, _check_range, decayed_gradient
from ._slices import update_slices

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad, PyTorch's formulation (``torch.optim.Adagrad``).

    For each parameter ``p`` with gradient ``g`` (``-g`` when ``maximize``), at step ``t``::

        g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g                      (s starts at initial_accumulator_value)
        p = p - clr * g / (sqrt(s) + eps)

    Args:
        params: parameters or parameter groups (see ``Optimizer``).
        lr: learning rate (default 1e-2).
        lr_decay: learning-rate decay per step (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        initial_accumulator_value: starting value of the sum of squares (default 0).
        eps: added to the denominator (default 1e-10).
        maximize: ascend instead of descend.

    State per parameter: ``step`` (int) and ``sum`` (``s``). As in PyTorch, the parameters
    given to the constructor get their state at once (step 0, ``sum`` filled with
    ``initial_accumulator_value``), so the state dict lists them before the first step;
    parameters added later with ``add_param_group`` get it at their first update. Unlike
    PyTorch, a group's own ``initial_accumulator_value`` is used for that group (PyTorch
    uses the constructor's value for every group).

    Shape:
        Updates each ``Parameter.data`` in place; dtypes are kept (float32 stays float32).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
                 maximize: bool = False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        _check_range("Adagrad", "lr_decay", group["lr_decay"], 0.0)
        _check_range("Adagrad", "weight_decay", group["weight_decay"], 0.0)
        _check_range("Adagrad", "initial_accumulator_value", group["initial_accumulator_value"], 0.0)
        _check_range("Adagrad", "eps", group["eps"], 0.0)

    def _init_state(self, p, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state.setdefault(p, {})
        if not state:
            state["step"] = 0
            state["sum"] = np.full_like(p.data, float(group["initial_accumulator_value"]))
        return state

    def _update(self, group: dict[str, Any], params: list) -> None:
        # Python floats stay "weak" in NumPy 2 arithmetic: float32 arrays stay float32.
        lr = float(group["lr"])
        lr_decay = float(group["lr_decay"])
        eps = float(group["eps"])
        wd = float(group["weight_decay"])
        maximize = bool(group["maximize"])
        for p in params:
            state = self._init_state(p, group)
            state["step"] += 1
            clr = lr / (1.0 + (state["step"] - 1) * lr_decay)
            for grad, data, total, t0, t1 in update_slices(self, p, p.grad.data, p.data, state["sum"]):
                _update_slice(data, grad, total, t0, t1, clr, eps, wd, maximize)


def _update_slice(p, grad, s, t0, t1, clr, eps, wd, maximize) -> None:
    """Adagrad on one slice, in place on ``p`` and ``s``; ``grad`` is only read; ``t0`` /
    ``t1``: scratch slices of the same length."""
    g = decayed_gradient(p, grad, wd, maximize, out=t0)  # grad itself when neither applies
    np.multiply(g, g, out=t1)
    s += t1
    np.sqrt(s, out=t1)
    t1 += eps
    np.divide(g, t1, out=t1)
    t1 *= clr
    p -= t1
