"""Adam and AdamW (decoupled weight decay), with optional AMSGrad."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from .optimizer import Optimizer, _check_range, decayed_gradient

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam, PyTorch's formulation (``torch.optim.Adam``).

    For each parameter ``p`` with gradient ``g`` (``-g`` when ``maximize``), at step ``t``::

        g = g + weight_decay * p                  (Adam: L2 penalty in the gradient)
        p = p * (1 - lr * weight_decay)           (AdamW / decoupled_weight_decay instead)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                     (amsgrad: v_max replaces v below)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Args:
        params: parameters or parameter groups (see ``Optimizer``).
        lr: learning rate (default 1e-3).
        betas: coefficients of the running averages of the gradient and its square
            (default (0.9, 0.999)).
        eps: added to the denominator for numerical stability (default 1e-8).
        weight_decay: weight decay (default 0).
        amsgrad: use the AMSGrad variant (default False).
        maximize: ascend instead of descend.
        decoupled_weight_decay: apply weight decay to the weights directly (AdamW).

    State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq`` and, with amsgrad,
    ``max_exp_avg_sq``.

    Shape:
        Updates each ``Parameter.data`` in place; dtypes are kept (float32 stays float32).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, decoupled_weight_decay: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        name = type(self).__name__
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(betas)
        _check_range(name, "beta1 (betas[0])", betas[0], 0.0, 1.0, high_open=True)
        _check_range(name, "beta2 (betas[1])", betas[1], 0.0, 1.0, high_open=True)
        _check_range(name, "eps", group["eps"], 0.0)
        _check_range(name, "weight_decay", group["weight_decay"], 0.0)

    def _update(self, group: dict[str, Any], params: list) -> None:
        # Python floats stay "weak" in NumPy 2 arithmetic: float32 arrays stay float32.
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        wd = float(group["weight_decay"])
        amsgrad = bool(group["amsgrad"])
        maximize = bool(group["maximize"])
        decoupled = bool(group["decoupled_weight_decay"])
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = 0
                state["exp_avg"] = np.zeros_like(p.data)
                state["exp_avg_sq"] = np.zeros_like(p.data)
                if amsgrad:
                    state["max_exp_avg_sq"] = np.zeros_like(p.data)
            elif amsgrad and state.get("max_exp_avg_sq") is None:
                # amsgrad switched on after some steps (e.g. a reloaded group): start the max here.
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]

            g = p.grad.data
            l2 = 0.0 if decoupled else wd
            if maximize or l2 != 0:
                g = decayed_gradient(p.data, g, l2, maximize, out=self._temp(p, 0))
            if wd != 0 and decoupled:
                p.data *= 1.0 - lr * wd

            # m = beta1 * m + (1 - beta1) * g, as PyTorch's lerp: m += (1 - beta1) * (g - m).
            sq = self._temp(p, 1)
            np.subtract(g, m, out=sq)
            sq *= 1.0 - beta1
            m += sq
            np.multiply(g, g, out=sq)
            sq *= 1.0 - beta2
            v *= beta2
            v += sq

            if amsgrad:
                vmax = state["max_exp_avg_sq"]
                np.maximum(vmax, v, out=vmax)
                v_used = vmax
            else:
                v_used = v
            step_size = lr / (1.0 - beta1 ** t)
            bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** t)
            denom = sq  # reuse the scratch
            np.sqrt(v_used, out=denom)
            denom /= bias_correction2_sqrt
            denom += eps
            np.divide(m, denom, out=denom)
            denom *= step_size
            p.data -= denom


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): ``p *= 1 - lr * weight_decay``
    before the Adam update instead of adding ``weight_decay * p`` to the gradient.

    Args:
        params: parameters or parameter groups (see ``Optimizer``).
        lr: learning rate (default 1e-3).
        betas: running-average coefficients (default (0.9, 0.999)).
        eps: denominator term (default 1e-8).
        weight_decay: decoupled weight decay (default 1e-2).
        amsgrad: use the AMSGrad variant (default False).
        maximize: ascend instead of descend.

    State per parameter: as ``Adam``.

    Shape:
        Updates each ``Parameter.data`` in place; dtypes are kept.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True)
