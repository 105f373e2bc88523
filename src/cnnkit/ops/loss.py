"""Losses. Each loss module computes its value and its gradient with respect to the
predictions on arrays (``nn.losses``: cross-entropy, NLL, MSE, L1, BCE with logits, with
their formulas written out there); ``Loss`` records that pair in the graph.

cross_entropy:  L = -sum_c t_c log softmax(z)_c      dL/dz = softmax(z) - t
nll:            L = -w_t * logp_t                    dL/dlogp = -w_t at t, 0 elsewhere
mse:            L = (x - y)^2                        dL/dx = 2 (x - y)
l1:             L = |x - y|                          dL/dx = sign(x - y)
bce_logits:     L = pw y softplus(-x) + (1-y) softplus(x)   dL/dx = (1-y) s - pw y (1-s)
(each then reduced: mean, sum or none, the gradient scaled alike).
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Function

__all__ = ["Loss"]


class Loss(Function):
    """``loss(pred, target)`` for a loss module ``loss`` (its configuration: weights,
    reduction, label smoothing). The target gets no gradient."""

    @staticmethod
    def forward(ctx, pred, target, loss):
        value = loss._value(pred, target)
        ctx.cache, loss._cache = loss._cache, None
        ctx.loss = loss
        return np.asarray(value, dtype=pred.dtype)

    @staticmethod
    def backward(ctx, g):
        loss = ctx.loss
        loss._cache = ctx.cache
        try:
            up = g if loss.reduction == "none" else g.reshape(()).item()
            grad = loss._gradient(up)
        finally:
            loss._cache = None
        return grad, None
