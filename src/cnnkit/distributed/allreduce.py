"""Gradient averaging in one allreduce per step.

Every trainable parameter's gradient, the model's floating-point buffers (BatchNorm's running
statistics) and a few step counters (loss sum, correct predictions, samples, stop flag) are laid
end to end in one preallocated buffer; one in-place ``MPI_Allreduce`` (sum) reduces all of it, and
the results are copied back into the gradients and buffers. One message per step instead of one
per parameter: the per-message latency is paid once (a ResNet has ~100 parameter arrays).

Weighting: rank ``r`` holds the mean gradient over its ``n_r`` samples; it contributes
``grad * n_r / n``, ``n`` the global batch size, so the sum is the mean gradient over the whole
global batch, the one a single process computes (up to float32 rounding of the reordered sum).

Buffers (BatchNorm's running mean and variance), mode ``"broadcast"`` (the default): as PyTorch's
DistributedDataParallel with ``broadcast_buffers=True``, every rank normalises with its own shard's
batch statistics, and rank 0's running statistics are the ones everybody continues with (rank 0
contributes its buffers, the others zeros; ``x + 0`` is exact). Mode ``"average"``: the ranks'
running statistics are averaged with the shard-size weights instead (the running mean then
equals the running mean of the global batches' means). Integer buffers (``num_batches_tracked``)
advance identically on every rank and are left alone.
"""

from __future__ import annotations

import numpy as np

#: Step counters carried in the same message: loss * samples, correct, samples, stop flag.
N_COUNTERS = 4


class GradientAllreduce:
    """Averages a model's gradients (and syncs its buffers) over the ranks of ``comm``.

    Args:
        comm: a :class:`~cnnkit.distributed.comm.Comm`.
        model: the ``nn.Module``; its parameters and buffers are looked up at every call
            (a layer may replace a buffer array).
        buffers: ``"broadcast"`` (rank 0's running statistics, as PyTorch DDP) or ``"average"``.

    Attributes:
        last_seconds (float): wall time of the last ``MPI_Allreduce`` call.
        total_seconds (float), calls (int): accumulated over all steps.
    """

    def __init__(self, comm, model, buffers: str = "broadcast"):
        if buffers not in ("broadcast", "average"):
            raise ValueError(f"buffers must be 'broadcast' or 'average', got {buffers!r}")
        self.comm, self.model, self.buffers = comm, model, buffers
        params = [p for p in model.parameters() if p.requires_grad]
        dtypes = {p.data.dtype for p in params} or {np.dtype(np.float32)}
        self.dtype = np.result_type(*dtypes)  # float32 unless the model is float64
        size = sum(p.data.size for p in params) + sum(b.size for b in self._float_buffers()) + N_COUNTERS
        self.flat = np.empty(size, dtype=self.dtype)
        self.last_seconds, self.total_seconds, self.calls = 0.0, 0.0, 0

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes

    def _float_buffers(self) -> list[np.ndarray]:
        return [b for _, b in self.model.named_buffers() if np.issubdtype(b.dtype, np.floating)]

    def __call__(self, weight: float, counters) -> np.ndarray:
        """Average the gradients over ranks in place; returns the summed ``counters``.

        Args:
            weight: this rank's share of the global batch (``n_r / n``).
            counters: ``N_COUNTERS`` numbers to sum over ranks.

        Returns:
            float64 array of the summed counters.
        """
        import time

        flat, w = self.flat, self.dtype.type(weight)
        params = [p for p in self.model.parameters() if p.requires_grad]
        buffers = self._float_buffers()
        at = 0
        for p in params:
            view = flat[at:at + p.data.size].reshape(p.data.shape)
            if p.grad is None:  # the parameter took no part in this step's loss
                view[...] = 0
            else:
                np.multiply(np.asarray(p.grad), w, out=view)
            at += p.data.size
        for b in buffers:
            view = flat[at:at + b.size].reshape(b.shape)
            if self.buffers == "average":
                np.multiply(b, w, out=view)
            elif self.comm.rank == 0:
                view[...] = b
            else:
                view[...] = 0
            at += b.size
        flat[at:] = counters
        t0 = time.perf_counter()
        self.comm.allreduce_sum(flat)
        self.last_seconds = time.perf_counter() - t0
        self.total_seconds += self.last_seconds
        self.calls += 1
        at = 0
        for p in params:
            view = flat[at:at + p.data.size].reshape(p.data.shape)
            if p.grad is None:
                p.grad = view.copy()
            else:
                np.copyto(np.asarray(p.grad), view)
            at += p.data.size
        for b in buffers:
            np.copyto(b, flat[at:at + b.size].reshape(b.shape))
            at += b.size
        return flat[at:].astype(np.float64)


def broadcast_state(comm, model) -> None:
    """Give every rank rank 0's parameters and buffers (once, at the start of training)."""
    arrays = [p.data for p in model.parameters()] + [b for _, b in model.named_buffers()]
    for dtype in sorted({a.dtype.str for a in arrays}):
        group = [a for a in arrays if a.dtype.str == dtype]
        flat = np.concatenate([a.reshape(-1) for a in group]) if comm.rank == 0 else \
            np.empty(sum(a.size for a in group), dtype=np.dtype(dtype))
        comm.broadcast(flat)
        at = 0
        for a in group:
            np.copyto(a, flat[at:at + a.size].reshape(a.shape))
            at += a.size
