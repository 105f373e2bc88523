"""Batch transforms: each takes and returns a float batch ``(N, C, H, W)``, vectorised.

They run on whole batches (after ``DataLoader`` has scaled pixels to [0, 1]), never loop over
pixels, keep the input's dtype, and never modify their input in place. Random transforms draw
from their ``generator`` or, when it is None, from cnnkit's global generator at call time, so
``cnnkit.manual_seed(s)`` makes a run reproducible. Names and semantics follow torchvision.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..random import get_generator


def _check_batch(x: np.ndarray, who: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        shape = getattr(x, "shape", None)
        dtype = getattr(x, "dtype", type(x).__name__)
        raise ValueError(f"{who}: expected a float batch of shape (N, C, H, W), got shape {shape} "
                         f"dtype {dtype}")
    return x


def _pair(size, who: str, arg: str = "size") -> tuple[int, int]:
    if isinstance(size, numbers.Integral):
        size = (int(size), int(size))
    if not (isinstance(size, Sequence) and len(size) == 2
            and all(isinstance(v, numbers.Integral) and v > 0 for v in size)):
        raise ValueError(f"{who}: {arg} must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


class Compose:
    """Apply transforms one after the other.

    Args:
        transforms: a list of callables ``x -> x``.
    """

    def __init__(self, transforms: Sequence[Callable[[np.ndarray], np.ndarray]]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel.

    Args:
        mean, std: one value per channel (or one value for all channels).

    Shape:
        ``(N, C, H, W)`` -> same.
    """

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ValueError(f"Normalize: mean and std must be numbers or 1-D sequences, "
                             f"got {mean!r}, {std!r}")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be > 0, got {std!r}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "Normalize")
        c = x.shape[1]
        for arg, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, c):
                raise ValueError(f"Normalize: {arg} has {len(v)} values, the batch has {c} channels")
        mean = self.mean.astype(x.dtype).reshape(1, -1, 1, 1)
        inv_std = (1.0 / self.std).astype(x.dtype).reshape(1, -1, 1, 1)
        out = x - mean
        out *= inv_std
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomHorizontalFlip:
    """Flip each sample left-right with probability ``p``.

    Args:
        p: flip probability per sample.
        generator: numpy Generator; default cnnkit's global one.
    """

    def __init__(self, p: float = 0.5, generator: np.random.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p, self.generator = float(p), generator

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "RandomHorizontalFlip")
        flip = get_generator(self.generator).random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomVerticalFlip(RandomHorizontalFlip):
    """Flip each sample upside down with probability ``p``."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "RandomVerticalFlip")
        flip = get_generator(self.generator).random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip, :, ::-1, :]
        return out

    def __repr__(self) -> str:
        return f"RandomVerticalFlip(p={self.p})"


def _padding4(padding, who: str) -> tuple[int, int, int, int]:
    """torchvision's padding forms -> (left, top, right, bottom)."""
    if isinstance(padding, numbers.Integral):
        padding = (padding,) * 4
    elif isinstance(padding, Sequence) and len(padding) == 2:
        padding = (padding[0], padding[1], padding[0], padding[1])
    if not (isinstance(padding, Sequence) and len(padding) == 4
            and all(isinstance(v, numbers.Integral) and v >= 0 for v in padding)):
        raise ValueError(f"{who}: padding must be an int >= 0, (left/right, top/bottom) or "
                         f"(left, top, right, bottom), got {padding!r}")
    return tuple(int(v) for v in padding)


class RandomCrop:
    """Pad, then crop a random ``size`` window from each sample (independent offsets).

    Args:
        size: output (height, width), or an int for a square.
        padding: zero padding added first: int, (left/right, top/bottom) or (left, top, right, bottom).
        fill: the padding value.
        generator: numpy Generator; default cnnkit's global one.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, size_h, size_w)``.
    """

    def __init__(self, size, padding=0, fill: float = 0.0,
                 generator: np.random.Generator | None = None):
        self.size = _pair(size, "RandomCrop")
        self.padding = _padding4(padding, "RandomCrop")
        self.fill, self.generator = float(fill), generator

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "RandomCrop")
        left, top, right, bottom = self.padding
        if any(self.padding):
            n, c, h, w = x.shape
            padded = np.full((n, c, h + top + bottom, w + left + right), self.fill, dtype=x.dtype)
            padded[:, :, top:top + h, left:left + w] = x
            x = padded
        n, _, h, w = x.shape
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"RandomCrop: crop size {self.size} is larger than the padded image "
                             f"({h}, {w})")
        rng = get_generator(self.generator)
        oy = rng.integers(0, h - th + 1, size=n)
        ox = rng.integers(0, w - tw + 1, size=n)
        # A view of every window (no copy), then one gather: windows[i, :, oy[i], ox[i]].
        windows = sliding_window_view(x, (th, tw), axis=(2, 3))
        return windows[np.arange(n), :, oy, ox]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class CenterCrop:
    """Crop the central ``size`` window (offset ``round((H - h) / 2)`` as in torchvision).

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, size_h, size_w)``.
    """

    def __init__(self, size):
        self.size = _pair(size, "CenterCrop")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "CenterCrop")
        h, w = x.shape[2:]
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"CenterCrop: crop size {self.size} is larger than the image ({h}, {w})")
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return x[:, :, top:top + th, left:left + tw].copy()

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class GaussianNoise:
    """Add ``N(mean, std^2)`` noise to every value, optionally clipping the result.

    Args:
        std: noise standard deviation.
        mean: noise mean.
        clip: ``(low, high)`` to clip to, or None.
        generator: numpy Generator; default cnnkit's global one.
    """

    def __init__(self, std: float = 0.1, mean: float = 0.0, clip: tuple[float, float] | None = None,
                 generator: np.random.Generator | None = None):
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std, self.mean, self.clip, self.generator = float(std), float(mean), clip, generator

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "GaussianNoise")
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        noise = get_generator(self.generator).standard_normal(x.shape, dtype=dtype)
        noise *= self.std  # in place with a Python float: stays in `dtype`
        noise += self.mean
        out = (x + noise).astype(x.dtype, copy=False)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, mean={self.mean}, clip={self.clip})"


# Pillow's resampling filters (Pillow/src/libImaging/Resample.c), as (function, support).
def _triangle(t):
    t = np.abs(t)
    return np.where(t < 1.0, 1.0 - t, 0.0)


def _cubic(t, a=-0.5):
    t = np.abs(t)
    return np.where(t < 1.0, ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0,
                    np.where(t < 2.0, (((t - 5.0) * t + 8.0) * t - 4.0) * a, 0.0))


_FILTERS = {"bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}


def resize_matrix(in_size: int, out_size: int, interpolation: str = "bilinear",
                  antialias: bool = True) -> np.ndarray:
    """The ``(out_size, in_size)`` float64 matrix of one 1-D resize, as Pillow computes it.

    Each row holds the normalised filter weights of one output pixel centred at
    ``(i + 0.5) * in/out`` in input coordinates; when shrinking with ``antialias`` the filter is
    widened by the scale factor (Pillow's behaviour, torchvision's ``antialias=True``).
    """
    scale = in_size / out_size
    if interpolation == "nearest":
        src = np.minimum(np.floor((np.arange(out_size) + 0.5) * scale).astype(np.int64), in_size - 1)
        m = np.zeros((out_size, in_size))
        m[np.arange(out_size), src] = 1.0
        return m
    fn, support = _FILTERS[interpolation]
    fscale = max(scale, 1.0) if antialias else 1.0
    support *= fscale
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    j = np.arange(in_size)
    weights = fn((j[None, :] - center[:, None] + 0.5) / fscale)
    weights *= (j[None, :] >= xmin[:, None]) & (j[None, :] < xmax[:, None])
    total = weights.sum(axis=1, keepdims=True)
    return weights / np.where(total == 0.0, 1.0, total)


def _taps(matrix: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A banded resize matrix as (first input index (out,), weights (out, K)): only the nonzero taps."""
    nz = matrix != 0
    first = np.argmax(nz, axis=1)
    last = matrix.shape[1] - 1 - np.argmax(nz[:, ::-1], axis=1)
    k = int((last - first).max()) + 1
    first = np.minimum(first, matrix.shape[1] - k)  # keep every window inside the input
    cols = first[:, None] + np.arange(k)
    return first, np.take_along_axis(matrix, cols, axis=1).astype(dtype)


def _apply_taps(x: np.ndarray, axis: int, first: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resize along ``axis``: out[..., i, ...] = sum_k weights[i, k] * x[..., first[i] + k, ...].

    A loop over the K filter taps (a handful), each a vectorised gather + multiply-add, instead
    of a dense matrix product that would spend almost all its work on zeros.
    """
    shape = [1] * x.ndim
    shape[axis] = len(first)
    out = None
    for k in range(weights.shape[1]):
        term = np.take(x, first + k, axis=axis)
        term *= weights[:, k].reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    return out


class Resize:
    """Resize every sample with a separable filter (one pass per axis over the filter taps).

    Matches Pillow's ``Image.resize`` on float images (antialiased when shrinking).

    Args:
        size: ``(height, width)``, or an int: the shorter side becomes ``size`` and the longer
            keeps the aspect ratio (``int(size * long / short)``, as in torchvision).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        antialias: widen the filter when shrinking (Pillow / torchvision default).

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, out_h, out_w)``.
    """

    def __init__(self, size, interpolation: str = "bilinear", antialias: bool = True):
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"Resize: interpolation must be 'bilinear', 'bicubic' or 'nearest', "
                             f"got {interpolation!r}")
        if isinstance(size, numbers.Integral):
            if size <= 0:
                raise ValueError(f"Resize: size must be positive, got {size}")
            self.size: int | tuple[int, int] = int(size)
        else:
            self.size = _pair(size, "Resize")
        self.interpolation, self.antialias = interpolation, bool(antialias)
        self._cache: dict = {}

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if isinstance(self.size, tuple):
            return self.size
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(self.size * long / short)
        return (self.size, new_long) if h <= w else (new_long, self.size)

    def _taps(self, h, w, dtype):
        key = (h, w, np.dtype(dtype).str)
        if key not in self._cache:
            oh, ow = self.output_size(h, w)
            self._cache = {key: (_taps(resize_matrix(h, oh, self.interpolation, self.antialias), dtype),
                                 _taps(resize_matrix(w, ow, self.interpolation, self.antialias), dtype))}
        return self._cache[key]  # one entry: a loader's image size rarely changes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "Resize")
        h, w = x.shape[2:]
        if self.output_size(h, w) == (h, w):
            return x.copy()
        taps_h, taps_w = self._taps(h, w, x.dtype)
        return _apply_taps(_apply_taps(x, 3, *taps_w), 2, *taps_h)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, interpolation={self.interpolation!r})"


class RandomErasing:
    """Erase a random rectangle in each sample with probability ``p`` (Zhong et al. 2017).

    Args:
        p: probability per sample.
        scale: range of the erased area as a fraction of the image area.
        ratio: range of the rectangle's aspect ratio (height / width), drawn log-uniformly.
        value: fill value (a number, or one per channel).
        generator: numpy Generator; default cnnkit's global one.

    Up to 10 draws per sample look for a rectangle that fits (as torchvision does); a sample
    with none is left unchanged.
    """

    ATTEMPTS = 10

    def __init__(self, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0,
                 generator: np.random.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomErasing: p must be in [0, 1], got {p}")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomErasing: need 0 < scale[0] <= scale[1] <= 1 and "
                             f"0 < ratio[0] <= ratio[1], got scale={scale}, ratio={ratio}")
        self.p, self.scale, self.ratio = float(p), tuple(scale), tuple(ratio)
        self.value = np.atleast_1d(np.asarray(value, dtype=np.float64))
        self.generator = generator

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_batch(x, "RandomErasing")
        n, c, h, w = x.shape
        if len(self.value) not in (1, c):
            raise ValueError(f"RandomErasing: value has {len(self.value)} entries, batch has {c} channels")
        rng = get_generator(self.generator)
        apply = rng.random(n) < self.p
        shape = (self.ATTEMPTS, n)
        area = h * w * rng.uniform(self.scale[0], self.scale[1], size=shape)
        aspect = np.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), size=shape))
        eh = np.rint(np.sqrt(area * aspect)).astype(np.int64)
        ew = np.rint(np.sqrt(area / aspect)).astype(np.int64)
        fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
        first = np.argmax(fits, axis=0)  # first attempt that fits, per sample
        cols = np.arange(n)
        apply &= fits[first, cols]
        eh, ew = eh[first, cols], ew[first, cols]
        top = (rng.random(n) * (h - eh + 1)).astype(np.int64)
        left = (rng.random(n) * (w - ew + 1)).astype(np.int64)
        rows_in = (np.arange(h)[None, :] >= top[:, None]) & (np.arange(h)[None, :] < (top + eh)[:, None])
        cols_in = (np.arange(w)[None, :] >= left[:, None]) & (np.arange(w)[None, :] < (left + ew)[:, None])
        mask = apply[:, None, None] & rows_in[:, :, None] & cols_in[:, None, :]
        fill = self.value.astype(x.dtype).reshape(1, -1, 1, 1)
        return np.where(mask[:, None], fill, x)

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio})"
