"""Run the kernels' batch loops on several threads.

Why: NumPy runs copies and elementwise operations on one core; only the BLAS GEMM is
multi-threaded. Splitting the batch over a small thread pool (NumPy releases the GIL in
its copy, ufunc and matmul loops) makes im2col, pooling and the GEMMs all use every core.

The pool (``_thread_pool.ThreadPool``) runs part 0 of a region on the caller's thread and
the others on its workers, one region at a time.

NumPy's OpenBLAS is set to one thread per call the first time the pool runs, and left so
(``set_num_threads(1)`` gives it back its previous setting). Why not restore it after each
parallel region: after a multi-threaded call OpenBLAS's idle workers spin for ~0.1 s, and
they then compete with the pool for the cores - measured: a conv4 training step took 1.8x
the CPU time of the serial run with the BLAS restored between regions, 1.3x without.
GEMMs outside the kernels (e.g. a Linear layer) can use ``parallel_matmul``. With the
optional MKL installed, the GEMMs that run on one BLAS thread go to its sequential
``cblas_sgemm`` instead (``_gemm``, ``blas_single_threaded``).

Fallback: when the OpenBLAS library of NumPy cannot be found (another BLAS, another
build), or when one thread is configured, everything runs serially in the caller.

The number of threads: ``set_num_threads(n)``, else the environment variable
``CNNKIT_NUM_THREADS``, else the number of CPUs this process may use.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from typing import Callable

import numpy as np

# _gemm imports this module too: it asks ``blas_single_threaded`` at call time only.
from . import _gemm, _recycle
from ._buffers import batch_chunks
from ._thread_pool import ThreadPool, usable_cpus

#: Below this many bytes of work a layer runs serially (an empty region costs 65-90 us here:
#: waking the other core).
MIN_PARALLEL_BYTES = 1 << 20

_lock = threading.Lock()
_pool: ThreadPool | None = None
_num_threads: int | None = None
_in_region = threading.local()
_saved_blas_threads: int | None = None   # NumPy's BLAS setting before the pool took over


def _forget_pool_after_fork() -> None:
    # A forked child (e.g. a data-loading worker) inherits the pool object but not its
    # threads: submitting to it would wait forever. Start afresh instead.
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _find_openblas():
    """(set_num_threads, get_num_threads) of NumPy's own OpenBLAS via ctypes, or None."""
    np_dir = os.path.dirname(np.__file__)
    candidates = glob.glob(os.path.join(np_dir, os.pardir, "numpy.libs", "*openblas*"))
    candidates += glob.glob(os.path.join(np_dir, ".dylibs", "*openblas*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                try:
                    set_fn = getattr(lib, f"{prefix}set_num_threads{suffix}")
                    get_fn = getattr(lib, f"{prefix}get_num_threads{suffix}")
                except AttributeError:
                    continue
                set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                return set_fn, get_fn
    return None


_blas = _find_openblas()


def threads_status() -> tuple[int, str]:
    """The kernels' thread count and what set it.

    Returns:
        (threads, why): ``set_num_threads``, ``CNNKIT_NUM_THREADS``, or the CPUs this
        process may run on.
    """
    if _num_threads is not None:
        return _num_threads, "set_num_threads / --threads"
    env = os.environ.get("CNNKIT_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"CNNKIT_NUM_THREADS: expected a positive integer, found {env!r}")
        return n, "CNNKIT_NUM_THREADS"
    return usable_cpus(), "the CPUs this process may use"


def get_num_threads() -> int:
    """Threads used by the convolution, pooling and Linear kernels (see ``set_num_threads``)."""
    if _num_threads is not None:
        return _num_threads
    return threads_status()[0]


def set_num_threads(n: int) -> None:
    """Set the threads cnnkit's kernels run on (public: ``cnnkit.set_num_threads``).

    Args:
        n: threads, >= 1; 1 runs everything serially in the caller and gives NumPy's BLAS
            its own thread setting back. Default: ``CNNKIT_NUM_THREADS``, else the CPUs
            this process may use.
    """
    global _num_threads, _pool, _saved_blas_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    with _lock:
        _num_threads = int(n)
        if _num_threads == 1 and _saved_blas_threads is not None and _blas is not None:
            _blas[0](_saved_blas_threads)
            _saved_blas_threads = None
        if _pool is not None:
            _pool.shutdown()
            _pool = None


def _get_pool(n: int) -> ThreadPool:
    """The pool of ``n`` threads in all (the caller's and n - 1 workers)."""
    global _pool
    with _lock:
        if _pool is None or _pool.size != n:
            if _pool is not None:
                _pool.shutdown()
            _pool = ThreadPool(n - 1, name="cnnkit")
        return _pool


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, stop) ranges covering range(n), as even as possible."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _single_threaded_blas() -> None:
    global _saved_blas_threads
    with _lock:
        if _saved_blas_threads is None:
            _saved_blas_threads = _blas[1]()
        _blas[0](1)


def blas_single_threaded() -> bool:
    """Whether a GEMM called here and now would run on one BLAS thread: inside a parallel
    region (the pool set NumPy's BLAS to one thread), or when that BLAS is set to one
    thread. A sequential GEMM library (``_gemm``) only replaces NumPy's where this holds."""
    if getattr(_in_region, "active", False):
        return True
    return _blas is not None and _blas[1]() == 1


def parallel_for(n: int, fn: Callable[[int, int], object], work_bytes: int) -> list:
    """Call ``fn(start, stop)`` on contiguous parts of range(n), one per thread; returns
    the results in order. Serial when the work is small, when only one thread is
    configured, inside another parallel region, or when BLAS threads cannot be controlled."""
    threads = get_num_threads()
    if (threads == 1 or n < 2 or work_bytes < MIN_PARALLEL_BYTES or _blas is None
            or getattr(_in_region, "active", False)):
        return [fn(0, n)]
    if not _gemm._decided:
        _gemm.backend()   # a first-use probe of the BLAS libraries times them before the pool runs
    parts = split(n, threads)
    pool = _get_pool(threads)

    def run(start, stop):
        _in_region.active = True
        try:
            return fn(start, stop)
        finally:
            _in_region.active = False

    _single_threaded_blas()
    return pool.run(run, parts)


def parallel_sum(n: int, part: Callable[[int, int], np.ndarray], bytes_per_sample: int,
                 chunk_bytes: int) -> np.ndarray:
    """The sum over batch chunks (n0, n1) of ``part(n0, n1)`` (a fresh array each), the
    chunks shared out to the threads: each thread adds its own chunks, then the threads'
    sums are added (weight gradients reduce over the batch this way)."""
    def run(start, stop):
        return sum_chunks(start, stop, part, bytes_per_sample, chunk_bytes)

    parts = parallel_for(n, run, n * bytes_per_sample)
    total = parts[0]
    for p in parts[1:]:
        total += p
    return total


def sum_chunks(start: int, stop: int, part: Callable[[int, int], np.ndarray], bytes_per_sample: int,
               chunk_bytes: int) -> np.ndarray:
    """One thread's share of ``parallel_sum``: ``part(n0, n1)`` over the batch chunks of
    [start, stop), added in order into the first one's array."""
    acc = None
    for n0, n1 in batch_chunks(start, stop, bytes_per_sample, chunk_bytes):
        p = part(n0, n1)
        if acc is None:
            acc = p
        else:
            acc += p
    return acc


def parallel_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a 2-D ``a`` (M, K) and ``b`` (K, N), split over the kernel threads (for
    GEMMs outside the convolution kernels once the pool owns the cores, e.g. Linear layers).
    Returns a new C-contiguous array.

    The longer side of the (M, N) output is split: with few rows (a batch of 64) a split of
    the rows would make every thread pack all of ``b``; a split of the columns packs half
    of it each (measured on a Linear 3136 -> 256 at batch 64: 1.19 ms serial, 1.04 ms by
    rows, 0.79 ms by columns).

    When ``b`` is the transposed view of a C-contiguous matrix (a Linear's ``weight.T``),
    the output is at least 4 times wider than tall and the inner dimension is long (>= 128),
    each thread computes its block of the transposed product, ``b.T[cols] @ a.T``, and
    copies it back transposed: OpenBLAS is ~15% faster in that orientation (one thread,
    batch 64: 3136 -> 256 1.18 -> 1.01 ms, 2048 -> 512 1.50 -> 1.26 ms, copy included).
    With more rows it is slower; with a short inner dimension the GEMM is cheap and the
    transposed copy dominates (the Winograd weight transform, K = 9, took 1.35x as long)."""
    if a.ndim != 2 or b.ndim != 2:
        return _gemm.matmul(a, b)
    m, n = a.shape[0], b.shape[1]
    out = _recycle.empty((m, n), dtype=np.result_type(a, b))
    work = a.nbytes + b.nbytes + out.nbytes
    if 4 * m <= n and a.shape[1] >= 128 and b.T.flags.c_contiguous and not b.flags.c_contiguous and out.size:
        bt, at = b.T, a.T

        def run(start, stop):
            block = _gemm.matmul(bt[start:stop], at)          # (stop - start, M)
            out[:, start:stop] = block.T

        parallel_for(n, run, work)
    elif n >= m:
        def run(start, stop):
            _gemm.matmul(a, b[:, start:stop], out=out[:, start:stop])
        parallel_for(n, run, work)
    else:
        def run(start, stop):
            _gemm.matmul(a[start:stop], b, out=out[start:stop])
        parallel_for(m, run, work)
    return out
