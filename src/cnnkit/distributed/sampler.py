"""Global batches split into one shard per rank.

Every rank draws the same shuffled order (the loader's own seeded generator, identical on all
ranks), cuts it into the global batches the user asked for, and loads only its own contiguous
part of each: rank ``r`` of ``N`` gets ``n // N`` samples, plus one when ``r < n % N``. So a batch
of 10 on 4 ranks is split 3, 3, 2, 2; the gradient averaging weighs each rank's gradient by its
share (see ``allreduce``), which makes the step the one a single process takes on all 10.

The one departure from a single process: a global batch with fewer samples than ranks (only the
last, partial batch of an epoch can be one) would leave a rank with nothing to compute on, so it
is dropped on every rank.
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import Subset, batch_of


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous shard of ``n`` samples."""
    base, extra = divmod(int(n), int(world))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _is_cnnkit_loader(loader) -> bool:
    return all(hasattr(loader, a) for a in ("dataset", "batch_size", "_order", "transform", "epochs_started"))


class ShardedLoader:
    """This rank's shards of a loader's global batches.

    Args:
        loader: a ``cnnkit.data.DataLoader`` (only the shard's samples are loaded and
            transformed), or any iterable of ``(x, y)`` batches with ``len()`` (each whole
            batch is made, then cut).
        rank, world: this rank and the number of ranks.

    Attributes:
        global_batch_size (int): samples of the global batch whose shard was yielded last.

    Shape:
        yields ``x[start:stop], y[start:stop]`` of each global batch ``(x, y)``.

    ``state_dict`` / ``load_state_dict`` are the wrapped loader's (the shuffling state is the
    same on every rank), so checkpoints look the same as a single process's.
    """

    def __init__(self, loader, rank: int, world: int):
        self.loader, self.rank, self.world = loader, int(rank), int(world)
        self.global_batch_size = 0
        if getattr(loader, "batch_size", None) is not None and loader.batch_size < world:
            raise ValueError(f"data-parallel training: the batch size ({loader.batch_size}) must be at least "
                             f"the number of ranks ({world}), so that every rank gets a sample of every batch")

    @property
    def dataset(self):
        return self.loader.dataset

    @property
    def batch_size(self):
        return self.loader.batch_size

    def _last_batch_dropped(self) -> bool:
        if not _is_cnnkit_loader(self.loader) or self.loader.drop_last:
            return False
        rest = len(self.loader.dataset) % self.loader.batch_size
        return 0 < rest < self.world

    def __len__(self) -> int:
        return len(self.loader) - (1 if self._last_batch_dropped() else 0)

    def __iter__(self):
        if not _is_cnnkit_loader(self.loader):
            yield from self._cut_whole_batches()
            return
        loader = self.loader
        order = loader._order()
        loader.epochs_started += 1
        bs = loader.batch_size
        for k in range(len(self)):
            idx = order[k * bs:(k + 1) * bs]
            start, stop = shard_bounds(len(idx), self.rank, self.world)
            x, y = batch_of(loader.dataset, idx[start:stop])
            if loader.transform is not None:
                x = loader.transform(x)
            self.global_batch_size = len(idx)
            yield x, y

    def _cut_whole_batches(self):
        for x, y in self.loader:
            n = len(x)
            if n < self.world:
                continue
            start, stop = shard_bounds(n, self.rank, self.world)
            self.global_batch_size = n
            yield x[start:stop], y[start:stop]

    def state_dict(self):
        return self.loader.state_dict() if hasattr(self.loader, "state_dict") else None

    def load_state_dict(self, state) -> None:
        if hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state)


def shard_eval_loader(loader, rank: int, world: int):
    """A loader over this rank's contiguous slice of ``loader``'s dataset (same batch size and
    transform), for evaluation split over ranks; None when ``loader`` is not a cnnkit
    DataLoader (then every rank evaluates the whole of it)."""
    if not _is_cnnkit_loader(loader):
        return None
    from ..data import DataLoader

    start, stop = shard_bounds(len(loader.dataset), rank, world)
    part = Subset(loader.dataset, np.arange(start, stop))
    return DataLoader(part, batch_size=loader.batch_size, transform=loader.transform)
