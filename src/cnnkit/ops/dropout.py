"""Inverted dropout: y = x * m / (1 - p), m ~ Bernoulli(1 - p);  dx = g * m / (1 - p).

The mask (0 or 1/(1-p) in x's dtype) is drawn by the caller (``nn.functional.dropout``)
from cnnkit's generator, so that runs are reproducible."""

from __future__ import annotations

from ..autograd.function import Function

__all__ = ["Dropout"]


class Dropout(Function):
    @staticmethod
    def forward(ctx, x, scaled_mask):
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask
