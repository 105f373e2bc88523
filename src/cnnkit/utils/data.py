"""cnnkit.utils.data: PyTorch's data names for what ``cnnkit.data`` has.

``Dataset`` (subclass it with ``__len__`` and ``__getitem__``), ``TensorDataset``,
``DataLoader`` (collates a user's samples into batches, yields Tensors), ``Subset`` and
``random_split``. Batches are prepared in the main process: ``num_workers`` is accepted and
has no effect (loading from memory is not where a NumPy CNN spends its time).
"""

from __future__ import annotations

import numpy as np

from .._tensor import Tensor
from ..data.dataset import Subset, random_split
from ..data.loader import DataLoader

__all__ = ["Dataset", "TensorDataset", "DataLoader", "Subset", "random_split"]


class Dataset:
    """Base class of a user's map-style dataset: define ``__len__`` and ``__getitem__(i)``
    returning ``(input, target)``; ``DataLoader`` stacks the samples into batches."""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define __len__")

    def __getitem__(self, index):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")


class TensorDataset(Dataset):
    """Samples are the i-th rows of the given tensors (or arrays), as ``torch``'s.

    Args:
        *tensors: tensors with the same first dimension.

    Shape:
        ``ds[i]`` is ``(t0[i], t1[i], ...)``.
    """

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset: needs at least one tensor")
        arrays = [np.asarray(t.data if isinstance(t, Tensor) else t) for t in tensors]
        n = arrays[0].shape[0]
        if any(a.shape[0] != n for a in arrays):
            raise ValueError(f"TensorDataset: tensors must have the same first dimension, got "
                             f"{[a.shape[0] for a in arrays]}")
        self.tensors = tuple(Tensor._wrap(a) for a in arrays)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def get_batch(self, indices):
        """The rows ``indices`` of every tensor at once (the DataLoader's fast path)."""
        idx = np.asarray(indices)
        return tuple(t.data[idx] for t in self.tensors)
