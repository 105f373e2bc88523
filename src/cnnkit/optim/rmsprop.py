"""RMSprop, optionally centered and with momentum."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .optimizer import Optimizer, _check_range, decayed_gradient

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop, PyTorch's formulation (``torch.optim.RMSprop``).

    For each parameter ``p`` with gradient ``g`` (``-g`` when ``maximize``)::

        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        avg = sqrt(v - ga * ga) + eps, ga = alpha * ga + (1 - alpha) * g   (centered)
        avg = sqrt(v) + eps                                               (otherwise)
        buf = momentum * buf + g / avg;  p = p - lr * buf                 (momentum > 0)
        p = p - lr * g / avg                                              (otherwise)

    Args:
        params: parameters or parameter groups (see ``Optimizer``).
        lr: learning rate (default 1e-2).
        alpha: smoothing constant of the squared-gradient average (default 0.99).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        momentum: momentum factor (default 0).
        centered: normalise by an estimate of the gradient's variance (default False).
        maximize: ascend instead of descend.

    State per parameter: ``step`` (int), ``square_avg``, plus ``momentum_buffer`` when
    momentum > 0 and ``grad_avg`` when centered.

    Shape:
        Updates each ``Parameter.data`` in place; dtypes are kept (float32 stays float32).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        _check_range("RMSprop", "alpha", group["alpha"], 0.0)
        _check_range("RMSprop", "eps", group["eps"], 0.0)
        _check_range("RMSprop", "weight_decay", group["weight_decay"], 0.0)
        _check_range("RMSprop", "momentum", group["momentum"], 0.0)

    def _update(self, group: dict[str, Any], params: list) -> None:
        # Python floats stay "weak" in NumPy 2 arithmetic: float32 arrays stay float32.
        lr = float(group["lr"])
        alpha = float(group["alpha"])
        eps = float(group["eps"])
        wd = float(group["weight_decay"])
        momentum = float(group["momentum"])
        centered = bool(group["centered"])
        maximize = bool(group["maximize"])
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = 0
                state["square_avg"] = np.zeros_like(p.data)
            if momentum > 0 and state.get("momentum_buffer") is None:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if centered and state.get("grad_avg") is None:
                state["grad_avg"] = np.zeros_like(p.data)
            state["step"] += 1

            g = p.grad.data
            if maximize or wd != 0:
                g = decayed_gradient(p.data, g, wd, maximize, out=self._temp(p, 0))

            v = state["square_avg"]
            avg = self._temp(p, 1)
            np.multiply(g, g, out=avg)
            avg *= 1.0 - alpha
            v *= alpha
            v += avg
            if centered:
                ga = state["grad_avg"]
                # ga = alpha * ga + (1 - alpha) * g, as PyTorch's lerp: ga += (1 - alpha) * (g - ga).
                np.subtract(g, ga, out=avg)
                avg *= 1.0 - alpha
                ga += avg
                np.multiply(ga, ga, out=avg)
                np.subtract(v, avg, out=avg)
                np.sqrt(avg, out=avg)
            else:
                np.sqrt(v, out=avg)
            avg += eps

            if momentum > 0:
                buf = state["momentum_buffer"]
                buf *= momentum
                np.divide(g, avg, out=avg)
                buf += avg
                np.multiply(buf, lr, out=avg)
            else:
                np.divide(g, avg, out=avg)
                avg *= lr
            p.data -= avg
