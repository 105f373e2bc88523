"""Data-parallel training over MPI: ``mpiexec -n N cnnkit train ...`` or ``fit(...)`` under
``mpiexec`` trains on N ranks, each on its shard of every global batch, with the gradients
averaged by one allreduce per step (``pip install mpi4py mpich, or from a checkout pip install -e '.[mpi]'``; see docs/distributed.md).

Nothing here is needed by hand: ``fit`` detects the MPI launcher. For scripts: ``rank()``,
``world_size()``, ``is_root()`` (print or write files only there) and ``describe()``.
"""

from .comm import describe, get_comm, is_root, launched_world_size, rank, threads_per_rank, world_size
from .data_parallel import DataParallel

__all__ = ["describe", "get_comm", "is_root", "launched_world_size", "rank", "threads_per_rank", "world_size", "DataParallel"]
