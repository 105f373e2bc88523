"""``DataLoader``: batches of ``(x float32 NCHW, y int64)`` from whole arrays.

A batch is one fancy-indexing step on the dataset's arrays (``dataset.get_batch(indices)``),
not a loop over samples; datasets without ``get_batch`` (any object with ``len`` and
``ds[i] -> (x, label)``) fall back to stacking samples.
"""

from __future__ import annotations

import math

import numpy as np

from .._tensor import Tensor

from ..random import get_generator
from .dataset import batch_of


class DataLoader:
    """Iterate over a dataset in (optionally shuffled) batches.

    Args:
        dataset: a cnnkit dataset (or anything with ``len`` and ``ds[i] -> (x, label)``).
        batch_size: samples per batch.
        shuffle: draw a new permutation at the start of every pass.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        seed: the loader gets its own generator ``np.random.default_rng(seed)``, so its order
            does not depend on anything else; without it, shuffling draws from cnnkit's global
            generator (``cnnkit.manual_seed``).
        transform: batch transform applied to ``x`` after the dataset's own (e.g. augmentation).
        num_workers, pin_memory: accepted for PyTorch compatibility; batches are prepared in
            the main process.

    Shape:
        yields Tensors ``x``: float32 ``(n, C, H, W)`` and ``y``: int64 ``(n,)``, ``n <= batch_size``
        (a user's dataset: its samples stacked field by field).

    Resuming: ``state_dict()`` returns the generator state and the number of passes started
    (JSON-able); ``load_state_dict()`` restores it, so the next pass has the same order as in an
    uninterrupted run. With the global generator use ``cnnkit.random.get_rng_state()`` instead.
    """

    def __init__(self, dataset, batch_size: int = 64, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None, transform=None, num_workers: int = 0,
                 pin_memory: bool = False, **_ignored):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader: transform must be callable, got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.transform = transform
        self.generator = np.random.default_rng(seed) if seed is not None else None
        self.epochs_started = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> np.ndarray:
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return get_generator(self.generator).permutation(n)

    def __iter__(self):
        order = self._order()
        self.epochs_started += 1
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            batch = batch_of(self.dataset, idx)
            if self.transform is not None:
                batch = (self.transform(batch[0]),) + tuple(batch[1:])
            yield _as_tensors(batch)

    def state_dict(self) -> dict:
        """``{"epochs_started": int, "generator": bit_generator state or None}`` (JSON-able)."""
        return {"epochs_started": self.epochs_started,
                "generator": None if self.generator is None else self.generator.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict()`` returned."""
        self.epochs_started = int(state.get("epochs_started", 0))
        gen_state = state.get("generator")
        if gen_state is not None:
            if self.generator is None:
                self.generator = np.random.default_rng()
            self.generator.bit_generator.state = gen_state

    def __repr__(self) -> str:
        return (f"DataLoader(dataset={self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed})")


def _as_tensors(batch):
    """Arrays of a batch as Tensors (no copy), in the batch's structure."""
    if isinstance(batch, tuple):
        return tuple(_as_tensors(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _as_tensors(v) for k, v in batch.items()}
    return batch if isinstance(batch, Tensor) else Tensor._wrap(np.asarray(batch))
