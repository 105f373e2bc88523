"""Batch normalisation over the channel dimension (PyTorch semantics).

Training mode normalises with the batch's mean and *biased* variance and updates the running
statistics with the *unbiased* variance: ``running = (1 - momentum) * running + momentum *
batch_stat`` (``momentum=None``: a cumulative average, 1 / num_batches_tracked). Eval mode
normalises with the running statistics. ``num_batches_tracked`` is an int64 buffer.
"""

from __future__ import annotations

import numpy as np

from . import _recycle
from .module import DEFAULT_DTYPE, Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d"]



#: Eval-mode BatchNorm works on blocks of about this many bytes (cache-sized).
EVAL_BLOCK_BYTES = 256 << 10


def _eval_affine_channels_last(x: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                               shift: np.ndarray | None) -> np.ndarray:
    """(x - mean) * scale (+ shift) per channel, for an NCHW view of channels-last memory
    (what the conv kernels return). Why not the plain broadcast: over (N, C, H, W) with
    channels last NumPy's inner loop is only C values long (16 to 40 in a bottleneck), and
    its overhead costs as much as the arithmetic. Here the image rows are (W*C,) runs with
    the per-channel vectors tiled to that length, and the three passes run on cache-sized
    blocks of rows, so the output is read back from cache. Returns the same layout."""
    n, c, h, w = x.shape
    rows = x.transpose(0, 2, 3, 1).reshape(n * h, w * c)
    mean_row, scale_row = np.tile(mean, w), np.tile(scale, w)
    shift_row = None if shift is None else np.tile(shift, w)
    out = _recycle.empty((n, h, w, c), dtype=x.dtype)
    out_rows = out.reshape(n * h, w * c)
    step = max(1, EVAL_BLOCK_BYTES // (w * c * x.itemsize))
    for r0 in range(0, n * h, step):
        dst = out_rows[r0:r0 + step]
        np.subtract(rows[r0:r0 + step], mean_row, out=dst)
        dst *= scale_row
        if shift_row is not None:
            dst += shift_row
    return out.transpose(0, 3, 1, 2)

class _BatchNorm(Module):
    _valid_ndims: tuple[int, ...] = ()
    _shape_text = ""

    returns_fresh_output = True       # see Module: a ReLU after it may work in place

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
        self._cache = None

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

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x)
        name = type(self).__name__
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name}({self.num_features}): expected a floating-point input, got dtype {x.dtype}")
        if x.ndim not in self._valid_ndims:
            raise ValueError(f"{name}({self.num_features}): expected {self._shape_text} input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{name}({self.num_features}): expected {self.num_features} channels in dim 1, "
                f"got input of shape {x.shape}"
            )
        return x.astype(self._dtype(), copy=False)

    @staticmethod
    def _bshape(x: np.ndarray) -> tuple[int, ...]:
        """Shape that broadcasts a per-channel vector against x: (1, C, 1, ...)."""
        return (1, x.shape[1]) + (1,) * (x.ndim - 2)

    # ------------------------------------------------------------------ passes
    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = self._bshape(x)
        count = x.size // x.shape[1]
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            if count <= 1:
                raise ValueError(
                    f"{type(self).__name__}({self.num_features}): expected more than 1 value per channel "
                    f"when training, got input of shape {x.shape}"
                )
            # Reductions accumulate in float64: the conv kernels hand over channels-last memory,
            # where a float32 running sum over N*H*W loses ~10x accuracy; on such views the
            # float64 accumulator costs no more time (measured) and only C-sized results are kept.
            mean = x.mean(axis=axes, dtype=np.float64).astype(x.dtype)
            xc = x - mean.reshape(bshape)
            var = np.mean(xc * xc, axis=axes, dtype=np.float64).astype(x.dtype)  # biased
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, count)
            inv_std = (1 / np.sqrt(var + self.eps)).astype(x.dtype, copy=False)
            xc *= inv_std.reshape(bshape)  # xc is a fresh array: normalise it in place into x_hat
            x_hat = xc
            if self.affine:
                out = x_hat * self.weight.data.reshape(bshape)
                out += self.bias.data.reshape(bshape)
            else:
                out = x_hat.copy()
            self._cache = (x_hat, None, inv_std, True, axes, count)
            return out
        # Running statistics: a per-channel affine map, out = (x - mean) * scale + bias.
        # (Folding the mean into the shift would save one pass but cancels catastrophically
        # in float32 when |mean| >> std; measured: 2 % error in VGG input gradients.)
        mean, inv_std, scale, shift = self.running_affine(x.dtype)
        if x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous:
            out = _eval_affine_channels_last(x, mean, scale, shift)
        else:
            out = x - mean.reshape(bshape)
            out *= scale.reshape(bshape)
            if shift is not None:
                out += shift.reshape(bshape)
        # x_hat is only needed for the weight gradient: rebuilt in backward from x if asked for.
        self._cache = (None, x, inv_std, False, axes, count)
        return out

    def running_affine(self, dtype) -> tuple:
        """The eval-mode map ``out = (x - mean) * scale (+ shift)`` from the running statistics.

        Args:
            dtype: the dtype of the vectors (the input's).

        Returns:
            ``(mean, inv_std, scale, shift)``, each (C,); shift is None without ``affine``.
        """
        inv_std = (1 / np.sqrt(self.running_var + self.eps)).astype(dtype, copy=False)
        scale = inv_std * self.weight.data if self.affine else inv_std
        shift = self.bias.data.astype(dtype, copy=False) if self.affine else None
        return (self.running_mean.astype(dtype, copy=False), inv_std, scale.astype(dtype, copy=False), shift)

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, count: int) -> None:
        self.num_batches_tracked += 1
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        rm, rv = self.running_mean, self.running_var
        unbiased = var * (count / (count - 1))
        rm *= 1 - factor
        rm += (factor * mean).astype(rm.dtype, copy=False)
        rv *= 1 - factor
        rv += (factor * unbiased).astype(rv.dtype, copy=False)

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        x_hat, x, inv_std, batch_stats, axes, count = self._need_cache(self._cache)
        bshape = self._bshape(grad_out)
        g = grad_out
        need_weight_grad = self.affine and self.weight.requires_grad
        if x_hat is None and need_weight_grad:
            x_hat = (x - self.running_mean.astype(x.dtype, copy=False).reshape(bshape)) * inv_std.reshape(bshape)
        sum_g = g.sum(axis=axes, dtype=np.float64).astype(g.dtype)
        sum_g_xhat = None if x_hat is None else (g * x_hat).sum(axis=axes, dtype=np.float64).astype(g.dtype)
        if self.affine:
            if self.weight.requires_grad:
                self.weight.accumulate_grad(sum_g_xhat.astype(self.weight.dtype, copy=False))
            if self.bias.requires_grad:
                self.bias.accumulate_grad(sum_g.astype(self.bias.dtype, copy=False))
        if not self.needs_input_grad:
            return None
        scale = inv_std if not self.affine else inv_std * self.weight.data
        if not batch_stats:
            # Running statistics are constants: the layer is an affine map per channel.
            return g * scale.reshape(bshape)
        # d/dx of w * (x - mean) / std with batch mean and (biased) std:
        #   w / std * (g - mean(g) - x_hat * mean(g * x_hat))
        gi = x_hat * (sum_g_xhat / count).reshape(bshape)
        gi += (sum_g / count).reshape(bshape)
        np.subtract(g, gi, out=gi)
        gi *= scale.reshape(bshape)
        return gi


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
