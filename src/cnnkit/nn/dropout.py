"""Inverted dropout: zero elements with probability p in training, scale the rest by 1/(1-p)."""

from __future__ import annotations



import numpy as np

from .._tensor import Tensor
from . import functional
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Randomly zero elements during training (inverted dropout, as PyTorch).

    In training mode each element is kept with probability 1 - p and scaled by 1 / (1 - p),
    so the expected output equals the input; in eval mode the layer is the identity.

    Args:
        p: probability of zeroing an element, in [0, 1] (default 0.5).
        inplace: accepted for PyTorch compatibility and ignored (a new array is returned).
        generator: a ``numpy.random.Generator`` for the masks; default cnnkit's global
            generator (``cnnkit.manual_seed`` makes runs reproducible).

    Shape:
        any -> same.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, generator: np.random.Generator | None = None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"Dropout(p={self.p}): expected a floating-point input, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        return functional.dropout(x, self.p, self.training, generator=self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"
