"""Dataset base class, in-memory ``ArrayDataset``, ``Subset`` and ``random_split``.

Every cnnkit dataset keeps whole arrays: ``data`` (uint8, ``(N, H, W)`` for grayscale or
``(N, H, W, C)`` for colour, the layout of torchvision's ``.data``) and ``targets`` (int64).
``get_batch(indices)`` turns a batch into model input in one fancy-indexing step:
``x`` float32 ``(n, C, H, W)`` scaled to [0, 1] (then the dataset's transform, if any) and ``y``
int64 ``(n,)``. ``DataLoader`` uses it; ``ds[i]`` is the same for one sample.
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import numpy as np

from ..random import get_generator

_255 = np.float32(255.0)


def images_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, H, W)`` / ``(n, H, W, C)`` -> float32 ``(n, C, H, W)`` in [0, 1].

    Float input is taken to be in model layout already and is only cast to float32.
    """
    if images.dtype != np.uint8:
        return np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        x = images[:, None, :, :].astype(np.float32)
    else:
        # One copy does the transpose and the cast; dividing in place avoids a second buffer.
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    np.divide(x, _255, out=x)
    return x


def _as_index_array(indices, n: int, who: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype == bool:
        raise TypeError(f"{who}: boolean masks are not accepted as indices; use np.flatnonzero(mask)")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{who}: indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)][0]
        raise IndexError(f"{who}: index {bad} out of range for {n} samples")
    return idx


class Dataset:
    """Base class: a sized collection of ``(x, label)`` samples with a fast batch path.

    Subclasses either set ``self.data`` / ``self.targets`` arrays (and get everything for
    free) or override ``_load_batch(indices) -> (x float32 NCHW, y int64)``.

    Attributes:
        name (str): short name (``"fashion-mnist"``, the folder name for ImageFolder...).
        classes (list[str]): class names, index = label.
        transform: optional batch transform applied to ``x`` by ``get_batch`` and ``ds[i]``.
    """

    name: str = "dataset"
    classes: list[str] = []
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def _load_batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images_to_float(self.data[idx]), np.asarray(self.targets[idx], dtype=np.int64)

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``indices`` as ``(x float32 (n, C, H, W), y int64 (n,))``.

        Shape:
            x: ``(n, C, H, W)`` (or the float layout an ArrayDataset was given), y: ``(n,)``.
        """
        idx = _as_index_array(indices, len(self), type(self).__name__)
        x, y = self._load_batch(idx)
        if self.transform is not None:
            x = self.transform(x)
        return x, y

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not isinstance(i, numbers.Integral):
            raise TypeError(f"{type(self).__name__} index must be an int, got {type(i).__name__}; "
                            f"use get_batch(indices) for many samples")
        x, y = self.get_batch([int(i)])
        return x[0], int(y[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, classes={len(self.classes)})"


class ArrayDataset(Dataset):
    """A dataset over in-memory arrays (like PyTorch's ``TensorDataset``).

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, C)`` images (scaled to [0, 1] and moved to
            NCHW per batch), or a float array already in model layout (e.g. ``(N, C, H, W)`` or
            ``(N, D)``), cast to float32 per batch.
        targets: integer labels ``(N,)``.
        classes: class names; default ``["0", "1", ...]`` up to the largest label.
        name: a short name for reports.
        transform: optional batch transform.
    """

    def __init__(self, images, targets, classes: Sequence[str] | None = None,
                 name: str = "array", transform=None):
        images = np.asarray(images)
        targets = np.asarray(targets)
        if targets.ndim != 1 or not (np.issubdtype(targets.dtype, np.integer) or targets.size == 0):
            raise ValueError(f"ArrayDataset: targets must be a 1-D integer array, got shape "
                             f"{targets.shape} dtype {targets.dtype}")
        if images.ndim < 1 or len(images) != len(targets):
            raise ValueError(f"ArrayDataset: images and targets differ in length: "
                             f"{len(images) if images.ndim else 0} images, {len(targets)} targets")
        if images.dtype == np.uint8:
            if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3, 4))):
                raise ValueError(f"ArrayDataset: uint8 images must be (N, H, W) or (N, H, W, C) with "
                                 f"C in 1/3/4, got shape {images.shape} (NCHW uint8? transpose it "
                                 f"with .transpose(0, 2, 3, 1), or pass float data)")
        elif not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"ArrayDataset: images must be uint8 or floating, got {images.dtype}")
        self.data = images
        self.targets = targets.astype(np.int64, copy=False)
        if classes is None:
            top = int(self.targets.max()) + 1 if self.targets.size else 0
            classes = [str(k) for k in range(top)]
        self.classes = list(classes)
        self.name = name
        self.transform = transform


class Subset(Dataset):
    """The samples ``indices`` of ``dataset`` (a view: nothing is copied up front).

    ``targets`` is the subset's labels; ``data`` is materialised on access (a copy).
    """

    def __init__(self, dataset: Dataset, indices):
        self.dataset = dataset
        self.indices = _as_index_array(indices, len(dataset), "Subset")
        self.name = getattr(dataset, "name", "dataset")
        self.classes = list(getattr(dataset, "classes", []))
        self.transform = None  # the parent's transform already applies in its get_batch

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.dataset.targets)[self.indices]

    @property
    def data(self) -> np.ndarray:
        return self.dataset.data[self.indices]

    def _load_batch(self, idx):
        return batch_of(self.dataset, self.indices[idx])


def batch_of(dataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32, y int64)`` for ``idx``: ``dataset.get_batch`` when it has one, else stacked samples."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(idx)
    return collate([dataset[int(i)] for i in idx])


def collate(samples: list):
    """Stack a list of samples into a batch, field by field (PyTorch's default collation):
    ``(input, target)`` pairs give ``(inputs, targets)``; floats stay floating (float32
    unless already float64), Python ints become int64."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return tuple(collate([s[k] for s in samples]) for k in range(len(first)))
    if isinstance(first, dict):
        return {k: collate([s[k] for s in samples]) for k in first}
    arr = np.stack([np.asarray(s) for s in samples])
    if arr.dtype == np.float64 and not any(isinstance(s, np.ndarray) and s.dtype == np.float64 for s in samples[:1]):
        arr = arr.astype(np.float32)
    return arr


def random_split(dataset: Dataset, lengths: Sequence[float | int], seed: int | None = None,
                 generator: np.random.Generator | None = None) -> list[Subset]:
    """Split ``dataset`` into non-overlapping random ``Subset`` s.

    Args:
        dataset: any dataset with ``len``.
        lengths: integer lengths summing to ``len(dataset)``, or fractions summing to 1
            (floored, the remainder handed out one by one from the first split, as PyTorch does).
        seed: makes the split reproducible; else ``generator`` or cnnkit's global generator.

    Returns:
        list of Subset, one per length.
    """
    n = len(dataset)
    lengths = list(lengths)
    if not lengths:
        raise ValueError("random_split: lengths is empty")
    if all(isinstance(v, numbers.Integral) for v in lengths):
        counts = [int(v) for v in lengths]
        if any(c < 0 for c in counts) or sum(counts) != n:
            raise ValueError(f"random_split: lengths {counts} must be >= 0 and sum to the dataset "
                             f"length {n}")
    else:
        fr = np.asarray(lengths, dtype=np.float64)
        if np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
            raise ValueError(f"random_split: fractions {lengths} must be >= 0 and sum to 1")
        counts = [int(np.floor(n * f)) for f in fr]
        for k in range(n - sum(counts)):
            counts[k % len(counts)] += 1
    rng = np.random.default_rng(seed) if seed is not None else get_generator(generator)
    perm = rng.permutation(n)
    bounds = np.cumsum([0] + counts)
    return [Subset(dataset, perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
