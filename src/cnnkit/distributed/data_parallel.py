"""``fit`` under ``mpiexec``: what each rank does besides training on its shard.

- At the start: rank 0's parameters and buffers go to every rank; the training loader is
  replaced by this rank's shards of the same global batches (``sampler``); ranks other than
  0 print nothing and write no files (checkpoints, CSV logs).
- Each step, between the backward pass and ``optimizer.step()``: one allreduce averages the
  gradients, syncs BatchNorm's running statistics and sums the step's loss, correct
  predictions, samples and Ctrl-C flag (``allreduce``). Every rank then takes the same
  optimizer step and sees the same global metrics, so callbacks (EarlyStopping, best-model
  checkpoints) decide alike everywhere, and a Ctrl-C on any rank stops every rank after the
  same batch.
- Validation is split over the ranks and its sums reduced.
- Randomness (augmentation, Dropout): rank 0 keeps the run's generator; rank ``r`` gets a
  stream derived from it and ``r``, so the ranks' shards are not augmented alike.
  Checkpoints hold every rank's generator state, so a resumed run (same number of ranks)
  continues exactly.
- Failure: an exception on any rank prints one line naming the rank and ends the whole job
  with ``MPI_Abort`` (the other ranks would otherwise wait forever in the next allreduce).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import traceback

import numpy as np

from ..random import get_rng_state, set_rng_state
from .allreduce import GradientAllreduce, broadcast_state
from .comm import Comm, get_comm
from .sampler import ShardedLoader, shard_eval_loader


def _silent(*args, **kwargs) -> None:
    return None


def rank_stream(state: dict, rank: int) -> dict:
    """Rank ``rank``'s generator state derived from the shared ``state`` (rank 0 keeps it)."""
    if rank == 0:
        return state
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([*words, int(rank)]).bit_generator.state


class DataParallel:
    """The data-parallel side of one ``fit`` call (see the module docstring).

    Args:
        comm: the job's :class:`Comm` (``get_comm()``).
        buffers: BatchNorm running statistics: ``"broadcast"`` (rank 0's, as PyTorch DDP) or
            ``"average"``; ``CNNKIT_DDP_BUFFERS`` sets the default.

    Attributes:
        step_size (int), step_correct (int | None), stop (bool): the last step's global values.
        reducer (GradientAllreduce): timing of the allreduce (``total_seconds``, ``calls``).
    """

    def __init__(self, comm: Comm, buffers: str | None = None):
        self.comm = comm
        self.buffers = buffers or os.environ.get("CNNKIT_DDP_BUFFERS", "broadcast")
        self.reducer: GradientAllreduce | None = None
        self.loader: ShardedLoader | None = None
        self.step_size, self.step_correct, self.stop = 0, None, False
        self._rng_restored = False
        self._rank_states: list | None = None

    @classmethod
    def for_fit(cls) -> "DataParallel | None":
        """A DataParallel when this process is one of several MPI ranks, else None."""
        comm = get_comm()
        return None if comm is None else cls(comm)

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    # ------------------------------------------------------------------ start
    def share_checkpoint(self, resume):
        """``resume`` (a path) read on rank 0 and handed to every rank as a loaded Checkpoint,
        so the other machines need no copy of the run folder."""
        from ..io.checkpoint import load_checkpoint

        if hasattr(resume, "state_dict"):
            return resume
        data, error = None, None
        if self.is_root:
            try:
                with open(resume, "rb") as f:
                    data = f.read()
            except OSError as exc:
                error = f"cannot read the checkpoint to resume from: {exc}"
        error = self.comm.broadcast_json(error)
        if error:
            raise FileNotFoundError(error)
        data = self.comm.broadcast_bytes(data)
        if self.is_root:
            return load_checkpoint(resume)
        fd, tmp = tempfile.mkstemp(suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return load_checkpoint(tmp)
        finally:
            os.unlink(tmp)

    def restore_state(self, state: dict) -> dict:
        """A checkpoint's train_state with this rank's generator states put in (the saved ones
        when the world size matches, else ones derived from rank 0's)."""
        state = dict(state)
        saved = state.get("distributed") or {}
        ranks = saved.get("ranks")
        r = self.comm.rank
        if ranks and int(saved.get("world_size", 0)) == self.comm.size:
            mine = ranks[r]
        else:
            start = (state.get("epoch_start") or {}).get("rng")
            mine = {"rng": rank_stream(state["rng"], r),
                    "epoch_start_rng": None if start is None else rank_stream(start, r)}
        state["rng"] = mine["rng"]
        if state.get("epoch_start") and mine.get("epoch_start_rng") is not None:
            state["epoch_start"] = {**state["epoch_start"], "rng": mine["epoch_start_rng"]}
        self._rng_restored = True
        return state

    def attach(self, loop) -> None:
        """Set ``loop`` up for data-parallel training (called once, after any restore)."""
        comm = self.comm
        loop.dist = self
        broadcast_state(comm, loop.model)
        self.reducer = GradientAllreduce(comm, loop.model, self.buffers)
        self.loader = ShardedLoader(loop.train_loader, comm.rank, comm.size)
        loop.train_loader = self.loader
        if not self._rng_restored:
            set_rng_state(rank_stream(get_rng_state(), comm.rank))
        if not self.is_root:
            loop.verbose, loop.print = 0, _silent
            for cb in loop.callbacks:
                if getattr(cb, "root_only", False):
                    for hook in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
                                 "on_batch_end", "on_interrupt"):
                        setattr(cb, hook, _silent)

    # ------------------------------------------------------------------ each step
    def average_gradients(self, loop, out: np.ndarray, y: np.ndarray, loss: float) -> float:
        """Average the gradients over ranks (one allreduce); returns the global batch's mean
        loss and sets ``step_size``, ``step_correct``, ``stop``."""
        from ..train.fit import _is_classification

        n_local, n = len(y), self.loader.global_batch_size
        classification = _is_classification(out, y)
        correct = int(np.count_nonzero(out.argmax(axis=1) == y)) if classification else 0
        interrupt = getattr(loop, "_interrupt", None)
        requested = 1.0 if interrupt is not None and interrupt.requested else 0.0
        sums = self.reducer(n_local / n, [loss * n_local, correct, n_local, requested])
        self.step_size = int(round(sums[2]))
        self.step_correct = int(round(sums[1])) if classification else None
        self.stop = bool(sums[3] > 0)
        return float(sums[0] / sums[2])

    # ------------------------------------------------------------------ epoch end
    def evaluate(self, model, loader, loss_fn) -> dict:
        """``evaluate(...)`` with the samples split over the ranks; the same dict on every rank."""
        from ..train.fit import evaluate

        part = shard_eval_loader(loader, self.comm.rank, self.comm.size)
        if part is None:  # not a cnnkit DataLoader: every rank evaluates all of it
            return evaluate(model, loader, loss_fn, details=False)
        sums = np.zeros(4)
        if len(part.dataset):
            res = evaluate(model, part, loss_fn, details=False)
            n = res["num_samples"]
            sums[:] = [res.get("loss", 0.0) * n, round(res.get("accuracy", 0.0) * n), n, "accuracy" in res]
        self.comm.allreduce_sum(sums)
        result = {"num_samples": int(sums[2]), "loss": sums[0] / sums[2]}
        if sums[3] > 0:
            result["accuracy"] = sums[1] / sums[2]
        return result

    def before_checkpoints(self, loop) -> None:
        """Collect every rank's generator states on rank 0 (all ranks call this at the points
        where checkpoints may be written: each epoch's end and a Ctrl-C stop)."""
        start = loop._epoch_start["rng"] if loop._epoch_start else None
        self._rank_states = self.comm.gather_json({"rng": get_rng_state(), "epoch_start_rng": start})

    def checkpoint_state(self) -> dict:
        """The ``distributed`` entry of a checkpoint's train_state (rank 0)."""
        return {"world_size": self.comm.size, "ranks": self._rank_states}

    # ------------------------------------------------------------------ failure
    def run(self, loop):
        """``loop.run()``; an exception on this rank ends the whole job (MPI_Abort)."""
        from ..train.fit import TrainingInterrupted

        try:
            return loop.run()
        except TrainingInterrupted as exc:
            if self.stop:
                raise  # every rank stopped after the same batch: a clean, collective stop
            abort_with(self.comm, exc)  # a second Ctrl-C inside a step: this rank alone
            raise
        except BaseException as exc:
            abort_with(self.comm, exc)
            raise


def abort_with(comm: Comm, exc: BaseException) -> None:
    """Print ``exc`` naming the rank, then end every rank of the job."""
    where = f"rank {comm.rank} of {comm.size}"
    if isinstance(exc, KeyboardInterrupt):
        print(f"cnnkit: interrupted ({where}); stopping every rank", file=sys.stderr)
        code = 130
    else:
        if os.environ.get("CNNKIT_DEBUG"):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print(f"cnnkit: error on {where}: {type(exc).__name__}: {exc}; stopping every rank"
              + ("" if os.environ.get("CNNKIT_DEBUG") else " (CNNKIT_DEBUG=1 shows the traceback)"),
              file=sys.stderr)
        code = 1
    comm.abort(code)
