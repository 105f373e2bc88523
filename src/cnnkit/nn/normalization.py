"""Batch normalisation over the channel dimension (PyTorch semantics).

Training mode normalises with the batch's mean and *biased* variance and updates the running
statistics with the *unbiased* variance: ``running = (1 - momentum) * running + momentum *
batch_stat`` (``momentum=None``: a cumulative average, 1 / num_batches_tracked). Eval mode
normalises with the running statistics. ``num_batches_tracked`` is an int64 buffer.
"""

from __future__ import annotations

import numpy as np

from ..ops import normalization as ops
from .._tensor import Tensor
from .module import DEFAULT_DTYPE, Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    _valid_ndims: tuple[int, ...] = ()
    _shape_text = ""

    returns_fresh_output = True       # see nn.fusion: a ReLU after it may work in place

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        if int(num_features) <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got {num_features}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, DEFAULT_DTYPE))
            self.bias = Parameter(np.zeros(self.num_features, DEFAULT_DTYPE))
        else:
            self.weight = None
            self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, DEFAULT_DTYPE))
            self.register_buffer("running_var", np.ones(self.num_features, DEFAULT_DTYPE))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    # ------------------------------------------------------------------ helpers
    def _dtype(self) -> np.dtype:
        if self.weight is not None:
            return self.weight.data.dtype
        if self.running_mean is not None:
            return self.running_mean.dtype
        return np.dtype(DEFAULT_DTYPE)

    def _check(self, x) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}({self.num_features}): expected a Tensor or a numpy array, "
                            f"got {type(x).__name__}")
        name = type(self).__name__
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name}({self.num_features}): expected a floating-point input, got dtype {x.dtype}")
        if x.ndim not in self._valid_ndims:
            raise ValueError(f"{name}({self.num_features}): expected {self._shape_text} input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{name}({self.num_features}): expected {self.num_features} channels in dim 1, "
                f"got input of shape {tuple(x.shape)}"
            )
        return x.type(self._dtype())

    # ------------------------------------------------------------------ passes
    def forward(self, x: Tensor) -> Tensor:
        x = self._check(x)
        use_batch_stats = self.training or not self.track_running_stats
        track = self.training and self.track_running_stats
        momentum = self.momentum
        if track:
            self.num_batches_tracked += 1
            if momentum is None:   # a cumulative average
                momentum = 1.0 / float(self.num_batches_tracked)
        stats = (self.running_mean, self.running_var) if (track or not use_batch_stats) else (None, None)
        return ops.BatchNorm.apply(x, self.weight, self.bias, *stats, use_batch_stats, momentum, self.eps)

    def running_affine(self, dtype) -> tuple:
        """The eval-mode map ``out = (x - mean) * scale (+ shift)`` from the running statistics.

        Args:
            dtype: the dtype of the vectors (the input's).

        Returns:
            ``(mean, inv_std, scale, shift)``, each (C,); shift is None without ``affine``.
        """
        return ops.running_affine(self.running_mean, self.running_var, self.weight.data if self.affine else None,
                                  self.bias.data if self.affine else None, self.eps, dtype)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs over all dims but C.

    Args:
        num_features: C.
        eps: added to the variance for numerical stability (default 1e-5).
        momentum: running-statistics update factor (default 0.1; None = cumulative average).
        affine: learn a per-channel scale ``weight`` (init 1) and shift ``bias`` (init 0).
        track_running_stats: keep ``running_mean`` / ``running_var`` / ``num_batches_tracked``
            buffers and use them in eval mode.

    Shape:
        (N, C) or (N, C, L) -> same.
    """

    _valid_ndims = (2, 3)
    _shape_text = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs over N, H and W, per channel.

    Args:
        num_features: C.
        eps: added to the variance for numerical stability (default 1e-5).
        momentum: running-statistics update factor (default 0.1; None = cumulative average).
        affine: learn a per-channel scale ``weight`` (init 1) and shift ``bias`` (init 0).
        track_running_stats: keep ``running_mean`` / ``running_var`` / ``num_batches_tracked``
            buffers and use them in eval mode.

    Shape:
        (N, C, H, W) -> same.
    """

    _valid_ndims = (4,)
    _shape_text = "(N, C, H, W)"
