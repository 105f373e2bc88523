"""Who we are in an MPI job, and the few MPI calls cnnkit needs (through ``mpi4py``).

Detection: a process started by ``mpiexec`` / ``mpirun`` / ``srun`` finds its world size in the
launcher's environment (``PMI_SIZE`` for MPICH, Intel MPI and Slurm's PMI; ``OMPI_COMM_WORLD_SIZE``
for Open MPI; ``MV2_COMM_WORLD_SIZE`` for MVAPICH). Only then is ``mpi4py`` imported (importing it
initialises MPI), so a plain ``python`` or ``cnnkit`` process never touches MPI. Setting
``CNNKIT_DISTRIBUTED=0`` turns the data-parallel mode off under a launcher (every rank then trains
on its own, e.g. for a seed sweep).

No message is pickled: arrays travel through MPI's buffer calls, settings as UTF-8 JSON bytes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import numpy as np

#: Environment variables in which MPI launchers publish the world size.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")

_comm: "Comm | None" = None
_checked = False


def launched_world_size() -> int:
    """The world size announced by an MPI launcher's environment (1 when there is none)."""
    if os.environ.get("CNNKIT_DISTRIBUTED", "1").strip().lower() in ("0", "false", "no", "off"):
        return 1
    for var in SIZE_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return max(1, int(value))
    return 1


class Comm:
    """``MPI.COMM_WORLD`` with the calls cnnkit uses.

    Attributes:
        rank (int): this process's rank; size (int): the number of ranks.
        local_size (int): ranks on this machine (they share its cores).
        library (str): the MPI library, e.g. ``"MPICH 5.0.2"``.
    """

    def __init__(self, mpi):
        self.MPI = mpi
        self.world = mpi.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        node = self.world.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        node.Free()
        self.library = library_name(mpi.Get_library_version())

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, buf: np.ndarray) -> None:
        """Sum ``buf`` (a contiguous float32 / float64 array) over all ranks, in place."""
        self.world.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        """Overwrite ``buf`` (contiguous) on every rank with root's."""
        self.world.Bcast(buf, root=root)

    def broadcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        """Root's ``data`` on every rank (the others pass None)."""
        length = np.array([len(data) if self.rank == root else 0], dtype=np.int64)
        self.world.Bcast(length, root=root)
        buf = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(int(length[0]), np.uint8)
        self.world.Bcast(buf, root=root)
        return buf.tobytes()

    def broadcast_json(self, obj: Any = None, root: int = 0) -> Any:
        """Root's JSON-able ``obj`` on every rank."""
        data = json.dumps(obj).encode("utf-8") if self.rank == root else None
        return json.loads(self.broadcast_bytes(data, root).decode("utf-8"))

    def gather_json(self, obj: Any, root: int = 0) -> list | None:
        """Every rank's JSON-able ``obj``, as a list in rank order on root (None elsewhere)."""
        data = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)
        counts = np.zeros(self.size, dtype=np.int64)
        self.world.Gather(np.array([data.size], dtype=np.int64), counts, root=root)
        if self.rank != root:
            self.world.Gatherv(data, None, root=root)
            return None
        out = np.empty(int(counts.sum()), dtype=np.uint8)
        self.world.Gatherv(data, (out, counts), root=root)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return [json.loads(out[offsets[r]:offsets[r + 1]].tobytes().decode("utf-8")) for r in range(self.size)]

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (no rank is left waiting in a collective call)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.world.Abort(int(code))


def library_name(version_text: str) -> str:
    """A short name from ``MPI_Get_library_version``'s text: ``"MPICH 5.0.2"``,
    ``"Open MPI v4.1.5"``, ``"Intel(R) MPI Library 2021.10 for Linux* OS"``."""
    first = " ".join(version_text.strip().splitlines()[0].split()) if version_text.strip() else "unknown MPI"
    first = first.split(",")[0]
    return first.replace(" Version:", "")


def _import_mpi():
    try:
        import mpi4py
    except ImportError:
        raise RuntimeError(
            f"this process was started by an MPI launcher with {launched_world_size()} ranks, but mpi4py "
            "is not installed: pip install mpi4py mpich, or from a checkout pip install -e '.[mpi]' (or set CNNKIT_DISTRIBUTED=0 to train "
            "independently on every rank)") from None
    # All of cnnkit's MPI calls come from one thread at a time; asking for less than
    # MPI_THREAD_MULTIPLE keeps the library on its faster paths.
    mpi4py.rc.thread_level = "serialized"
    from mpi4py import MPI

    return MPI


def get_comm() -> Comm | None:
    """The world of this MPI job, or None for a single process (initialises MPI on first use).

    On first use in a job it also gives each rank its share of the machine's cores (the
    kernels' threads: cores / ranks on this machine, at least 1) unless ``CNNKIT_NUM_THREADS``
    says otherwise.

    Raises:
        RuntimeError: started by a launcher with several ranks but mpi4py is missing.
    """
    global _comm, _checked
    if _checked:
        return _comm
    if launched_world_size() > 1:
        comm = Comm(_import_mpi())
        if comm.size > 1:
            _comm = comm
            _share_cores(comm.local_size)
    _checked = True
    return _comm


def active() -> Comm | None:
    """The comm if a data-parallel world is already set up, without initialising anything."""
    return _comm


def _share_cores(local_size: int) -> None:
    from ..nn import _parallel

    if os.environ.get("CNNKIT_NUM_THREADS") or _parallel._num_threads is not None or local_size < 2:
        return
    threads = max(1, _parallel.get_num_threads() // local_size)
    _parallel.set_num_threads(threads)
    if threads == 1 and _parallel._blas is not None:
        # One kernel thread per rank: NumPy's BLAS must not start its own threads either
        # (set_num_threads(1) hands BLAS back its default, which is every core).
        _parallel._single_threaded_blas()


class FailedOnRoot(ValueError):
    """Raised on ranks other than 0 by :func:`on_root` when rank 0's call failed (rank 0 has
    the original exception and prints it)."""


def on_root(fn: Callable[[], Any]) -> Any:
    """``fn()`` (JSON-able result) computed on rank 0 and returned on every rank; for a single
    process simply ``fn()``. When it raises on rank 0, rank 0 re-raises and the others raise
    :class:`FailedOnRoot` with the same message."""
    comm = get_comm()
    if comm is None:
        return fn()
    result, error = None, None
    if comm.is_root:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    shared = comm.broadcast_json({"value": result} if error is None else {"error": str(error)})
    if error is not None:
        raise error
    if "error" in shared:
        raise FailedOnRoot(shared["error"])
    return shared["value"]


def abort_job(code: int) -> None:
    """End every rank of a running MPI job with exit ``code`` (nothing for a single process)."""
    if launched_world_size() < 2:
        return
    try:
        comm = get_comm()
    except RuntimeError:  # launched by mpiexec without mpi4py: nothing to abort through
        return
    if comm is not None:
        comm.abort(code)


def threads_per_rank() -> int:
    """The kernels' threads in this process."""
    from ..nn import _parallel

    return _parallel.get_num_threads()


def rank() -> int:
    """This process's rank (0 for a single process)."""
    comm = get_comm()
    return 0 if comm is None else comm.rank


def world_size() -> int:
    """The number of data-parallel ranks (1 for a single process)."""
    comm = get_comm()
    return 1 if comm is None else comm.size


def is_root() -> bool:
    """True on the rank that prints, plots and writes files (rank 0; a single process too)."""
    return rank() == 0


def describe() -> str:
    """One line on the data-parallel setup, for ``cnnkit info`` and the run header, e.g.
    ``"MPI: world size 2 (rank 0), MPICH 5.0.2, mpi4py 4.1.2"`` or ``"MPI: single process
    (mpi4py not installed; pip install mpi4py mpich, or from a checkout pip install -e '.[mpi]')"``."""
    try:
        import mpi4py
    except ImportError:
        return "MPI: single process (mpi4py not installed; pip install mpi4py mpich, or from a checkout pip install -e '.[mpi]' for mpiexec runs)"
    comm = get_comm()
    if comm is not None:
        return (f"MPI: world size {comm.size} ({comm.local_size} on this machine), {comm.library}, "
                f"mpi4py {mpi4py.__version__}")
    if launched_world_size() > 1:
        return "MPI: single process (CNNKIT_DISTRIBUTED=0 under an MPI launcher)"
    try:
        # The library's name without initialising MPI (allowed before MPI_Init).
        mpi4py.rc.initialize = False
        from mpi4py import MPI

        library = library_name(MPI.Get_library_version())
    except Exception as exc:  # a broken MPI install: say so rather than fail `cnnkit info`
        library = f"MPI library not loadable ({exc})"
    return f"MPI: single process (not started by mpiexec); {library}, mpi4py {mpi4py.__version__}"
