"""float32 matrix products through Intel MKL where it is faster than NumPy's OpenBLAS.

Why: the convolutions of small networks are GEMMs with few output columns (32-64 channels:
(N*H*W, 9*C) @ (9*C, 32)), where NumPy's OpenBLAS runs at about half its peak. On Intel
CPUs MKL's ``cblas_sgemm`` is 1.3-1.6x faster on them, one thread each (GFLOP/s on a Xeon,
OpenBLAS / MKL): (7168, 288) @ (288, 32) 100 / 143; (7168, 288) @ (288, 64) 117 / 157;
(288, 7168) @ (7168, 32) 99 / 158; 1024^3 144 / 163. On AMD CPUs MKL is slower than
OpenBLAS (an EPYC ran whole networks up to 1.8x slower with it). ``matmul`` is np.matmul for
the float32 2-D and stacked 3-D products of the kernels, run by MKL when it is the backend.
Stacks go to ``cblas_sgemm_batch_strided``, 4-15 % faster than a loop of calls on the
Winograd products (16, T, C) @ (16, C, O), except interleaved outputs, which it refuses.

Which backend: ``CNNKIT_BLAS=numpy`` or ``=mkl`` in the environment, or ``set_backend``,
decide. Otherwise the first product times both libraries, one thread each, on three
conv-shaped products (about 0.1 s) and keeps MKL only where it took at most 95 % of
NumPy's time; the result is cached per CPU model and library versions in
``~/.cache/cnnkit/blas/choice.json``, so later processes do not measure again. The mere
presence of the ``mkl`` package never decides. ``backend()`` says which backend runs and why.

Threads: MKL is loaded with its SEQUENTIAL threading layer, because cnnkit's thread pool
(``_parallel``) already splits the work over the cores and sets OpenBLAS to one thread.
A product is routed to MKL only where OpenBLAS would run on one thread too (inside a
``parallel_for`` region, or when OpenBLAS is set to one thread), so that a GEMM outside the
pool never loses OpenBLAS's own threads.

Safety: the library is found through the installed ``mkl`` distribution's file list (then
<prefix>/lib and ``ctypes.util.find_library``) and loaded with ctypes; the only functions
called are MKL's layer setters and ``cblas_sgemm`` / ``cblas_sgemm_batch_strided`` on
arrays whose shapes, strides and dtype were checked here (no pickle, no code from
elsewhere). Integers are 32-bit (mkl_rt's LP64 interface).

Fallback: np.matmul, silently, for anything else: MKL not installed (it is a dependency on
x86-64 Linux and Windows only) or not loadable or slower here, ``CNNKIT_BLAS=numpy``,
``set_backend("numpy")``, other dtypes, 1-D or 4-D operands, strides that are not row- or
column-contiguous, zero-size or over-2**31 dimensions, an ``out`` that overlaps an operand,
products of fewer than ``MIN_MACS`` multiply-adds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.metadata
import os
import re
import sys
import threading

import numpy as np

from . import _parallel

__all__ = ["matmul", "mkl_active", "backend", "gemm_backend", "set_backend", "sgemm_address"]

_F32 = np.dtype(np.float32)
_INT_MAX = 2 ** 31 - 1
# CBLAS enums and mkl_rt's layer constants (mkl_service.h).
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_INTERFACE_LP64, _THREADING_SEQUENTIAL = 0, 1
#: Products of fewer multiply-adds stay on NumPy: this wrapper's checks and ctypes call
#: cost ~7 us, as much as MKL saves below ~2-4 M (one thread: (128, 288) @ (288, 32)
#: 0.91x, (64, 512) @ (512, 64) 0.96x, (256, 288) @ (288, 32) 1.08x, (512, 288) @ (288, 32) 1.29x).
MIN_MACS = 1 << 22
#: mkl_rt's file names: mkl 2024-2025 ship libmkl_rt.so.2, mkl 2026 libmkl_rt.so.3.
_LIB_NAME = re.compile(r"^(lib)?mkl_rt(\.\d+)?\.(so(\.\d+)?|dylib|dll)$")

_lock = threading.Lock()
_sgemm = None            # cblas_sgemm when the MKL backend is active, else None
_sgemm_batch = None      # cblas_sgemm_batch_strided, likewise
_decided = False         # the backend has been chosen (lazily, at the first call)
_reason = "not loaded yet"
_loaded = None           # (cblas_sgemm, cblas_sgemm_batch_strided, path) once MKL was loaded


def _candidate_paths() -> list[str]:
    """Where the mkl wheel's libmkl_rt can be: its own file list first, then the lib
    folders of this environment and of the base installation, then the loader's search."""
    paths = []
    try:
        for f in importlib.metadata.files("mkl") or ():
            if _LIB_NAME.match(os.path.basename(str(f))):
                paths.append(os.path.normpath(str(f.locate())))
    except importlib.metadata.PackageNotFoundError:
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for sub in ("lib", "Library/bin"):
            found = glob.glob(os.path.join(prefix, sub, "*mkl_rt*"))
            paths += sorted((p for p in found if _LIB_NAME.match(os.path.basename(p))), reverse=True)
    found = ctypes.util.find_library("mkl_rt")
    if found:
        paths.append(found)
    # find_library gives a bare name for the loader to resolve; the others must exist.
    return [p for p in dict.fromkeys(paths) if not os.path.isabs(p) or os.path.exists(p)]


def _load_mkl():
    """(cblas_sgemm, cblas_sgemm_batch_strided, path) of a usable mkl_rt, or raise
    RuntimeError saying why not."""
    try:
        importlib.metadata.distribution("mkl")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("mkl not installed (a dependency on x86-64 Linux and Windows only)") from None
    errors = []
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)
            set_interface, set_threading = lib.MKL_Set_Interface_Layer, lib.MKL_Set_Threading_Layer
            sgemm, batch = lib.cblas_sgemm, lib.cblas_sgemm_batch_strided
        except (OSError, AttributeError) as e:
            errors.append(f"{path}: {e}")
            continue
        set_interface.argtypes = set_threading.argtypes = [ctypes.c_int]
        set_interface.restype = set_threading.restype = ctypes.c_int
        # Both return the layer in force: another user of mkl_rt in this process may
        # have chosen it already, and then ours is not applied.
        if set_interface(_INTERFACE_LP64) != _INTERFACE_LP64:
            raise RuntimeError(f"{path}: mkl_rt is already set to ILP64 (64-bit ints)")
        if set_threading(_THREADING_SEQUENTIAL) != _THREADING_SEQUENTIAL:
            raise RuntimeError(f"{path}: mkl_rt's threading layer is already set, not SEQUENTIAL")
        # MKL's own memory manager keeps the packing buffers of every thread's products
        # allocated for reuse: 30-35 MB more peak training memory on the VGG benchmark at
        # batch 256 (376 -> 341-349 MB without it), and no measured speed difference
        # (4-conv, VGG, LeNet training steps within 3 %). Without it MKL uses malloc/free.
        disable_fast_mm = getattr(lib, "mkl_disable_fast_mm", None)
        if disable_fast_mm is not None:
            disable_fast_mm.restype = ctypes.c_int
            disable_fast_mm()
        i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
        sgemm.restype = None
        batch.argtypes = [i, i, i, i, i, i, f, p, i, i, p, i, i, f, p, i, i, i]
        batch.restype = None
        return sgemm, batch, path
    raise RuntimeError("mkl installed, but libmkl_rt not loadable: " + ("; ".join(errors) or "not found"))


#: Conv-shaped products the automatic choice times (the kernels' narrow GEMMs: a 32- and a
#: 64-channel 3x3 convolution's forward product, and a weight gradient's long inner product).
_PROBE_SHAPES = (((7168, 288), (288, 32), False), ((3136, 576), (576, 64), False),
                 ((288, 7168), (7168, 32), True))
#: MKL is chosen when it takes at most this share of NumPy's time on the probe products:
#: a tie keeps NumPy (one library fewer in the process, its threads used outside the pool).
_MKL_MARGIN = 0.95
#: Bump when the probe changes, so that cached choices made by another probe are redone.
_PROBE_VERSION = 1


def _cpu_fields() -> dict[str, str]:
    """The first CPU's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return fields


def _cpu_name() -> str:
    """The CPU's model name, as the user knows it."""
    fields = _cpu_fields()
    for key in ("model name", "hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    import platform
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_id() -> str:
    """The model name with vendor, family and model numbers (VMs often name every Xeon alike)."""
    fields = _cpu_fields()
    numbers = "/".join(fields.get(k, "") for k in ("vendor_id", "cpu family", "model", "cpu part"))
    return f"{_cpu_name()} [{numbers}]"


def _cache_path():
    from ..data.locate import cache_dir  # ~/.cache/cnnkit/<name>, HOME read at call time

    return cache_dir("blas") / "choice.json"


def _cache_key() -> str:
    mkl = importlib.metadata.version("mkl")
    return f"{_cpu_id()} | numpy {np.__version__} | mkl {mkl} | probe {_PROBE_VERSION}"


def _read_cache(key: str):
    """The cached {"backend", "numpy_ms", "mkl_ms"} for this machine and these libraries, or None."""
    import json

    try:
        with open(_cache_path(), encoding="utf-8") as f:
            entry = json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if (isinstance(entry, dict) and entry.get("backend") in ("mkl", "numpy")
            and all(isinstance(entry.get(k), (int, float)) for k in ("numpy_ms", "mkl_ms"))):
        return entry
    return None


def _write_cache(key: str, entry: dict) -> None:
    """Add ``entry`` under ``key`` (best effort: a read-only home only costs a new probe)."""
    import json

    from ..io.atomic import atomic_write_text

    path = _cache_path()
    try:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def _probe(sgemm) -> tuple[float, float]:
    """(NumPy ms, MKL ms): the best of a few interleaved timings of the probe products, each
    library on one thread, as the thread pool runs them."""
    import time

    rng = np.random.default_rng(0)
    operands = []
    for (ma, ka), (kb, nb), transposed in _PROBE_SHAPES:
        a = rng.standard_normal((ka, ma) if transposed else (ma, ka), dtype=np.float32)
        operands.append((a.T if transposed else a, rng.standard_normal((kb, nb), dtype=np.float32)))
    outs = [np.empty((a.shape[0], b.shape[1]), _F32) for a, b in operands]

    def run_numpy():
        for (a, b), out in zip(operands, outs):
            np.matmul(a, b, out=out)

    def run_mkl():
        for (a, b), out in zip(operands, outs):
            _, _, m, n, k, ((ta, lda), a, _), ((tb, ldb), b, _), ldc, _ = _plan(a, b, out)
            sgemm(_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb,
                  0.0, out.ctypes.data, ldc)

    best = [float("inf"), float("inf")]
    saved = _parallel._blas[1]()
    _parallel._blas[0](1)
    try:
        run_numpy(), run_mkl()          # warm-up: pages, packing buffers, MKL's dispatch
        for _ in range(7):
            for i, run in enumerate((run_numpy, run_mkl)):
                t0 = time.perf_counter()
                run()
                best[i] = min(best[i], time.perf_counter() - t0)
    finally:
        _parallel._blas[0](saved)
    return best[0] * 1e3, best[1] * 1e3


def _auto_choice(loaded) -> tuple[bool, str]:
    """(use MKL, why): MKL is used where it measured faster than NumPy's BLAS on this machine
    (probed once, cached per CPU model and library versions)."""
    if _parallel._blas is None:
        return False, ("NumPy's BLAS is not OpenBLAS, or its threads cannot be set: it keeps "
                       "the GEMMs (MKL would only replace it on one thread)")
    key = _cache_key()
    entry = _read_cache(key)
    origin = f"cached in {_cache_path()}"
    if entry is None:
        numpy_ms, mkl_ms = _probe(loaded[0])
        entry = {"backend": "mkl" if mkl_ms <= _MKL_MARGIN * numpy_ms else "numpy",
                 "numpy_ms": round(numpy_ms, 3), "mkl_ms": round(mkl_ms, 3)}
        _write_cache(key, entry)
        origin = f"measured now, saved in {_cache_path()}"
    speed = entry["numpy_ms"] / max(entry["mkl_ms"], 1e-9)
    why = (f"MKL ran conv-shaped products at {speed:.2f}x NumPy's speed on {_cpu_name()} "
           f"(one thread; {origin}; CNNKIT_BLAS=numpy|mkl overrides)")
    return entry["backend"] == "mkl", why


def _choose(name: str | None) -> None:
    """Make ``name`` ("mkl", "numpy", or None: ``CNNKIT_BLAS``, else the faster one on this
    machine) the backend."""
    global _sgemm, _sgemm_batch, _decided, _reason, _loaded
    forced = name is not None
    source = "set_backend"
    if name is None:
        env = os.environ.get("CNNKIT_BLAS", "").strip().lower()
        source = f"CNNKIT_BLAS={env}"
        if env not in ("", "auto", "numpy", "openblas", "mkl"):
            raise ValueError(f"CNNKIT_BLAS: expected numpy, mkl or auto, found {env!r}")
        name = {"numpy": "numpy", "openblas": "numpy", "mkl": "mkl"}.get(env)
    _sgemm = _sgemm_batch = None
    _decided = True
    if name == "numpy":
        _reason = "set_backend('numpy')" if forced else f"{source}"
        return
    try:
        if _loaded is None:
            _loaded = _load_mkl()
    except RuntimeError as e:
        _reason = str(e)
        if forced:
            raise
        return
    if name is None:
        use, _reason = _auto_choice(_loaded)
        if not use:
            return
    else:
        _reason = f"{'set_backend' if forced else source}: {_loaded[2]}"
    _sgemm, _sgemm_batch = _loaded[0], _loaded[1]


def backend() -> tuple[str, str]:
    """The GEMM backend in use.

    Returns:
        ("mkl" or "numpy", why: what chose it, e.g. the measured speed of both).
    """
    with _lock:
        if not _decided:
            _choose(None)
        return ("mkl" if _sgemm is not None else "numpy"), _reason


#: Public name: ``cnnkit.nn.gemm_backend()``.
gemm_backend = backend


def set_backend(name: str | None) -> None:
    """Choose the GEMM backend (for tests and benchmarks).

    Args:
        name: "mkl" (raises RuntimeError when MKL cannot be loaded; the backend is then
            "numpy"), "numpy", or None for the default (``CNNKIT_BLAS``, else the faster of
            the two on this machine).
    """
    if name not in ("mkl", "numpy", None):
        raise ValueError(f"set_backend: expected 'mkl', 'numpy' or None, got {name!r}")
    with _lock:
        _choose(name)


def sgemm_address() -> int | None:
    """The address of MKL's ``cblas_sgemm`` (LP64, sequential) when MKL is the backend,
    else None: for compiled kernels that call it from machine code (``_jit_blas``)."""
    if not _decided:
        backend()
    if _sgemm is None or _loaded is None:
        return None
    return ctypes.cast(_loaded[0], ctypes.c_void_p).value


def mkl_active() -> bool:
    """Whether a large enough ``matmul`` called here and now runs on MKL (the backend is
    MKL and NumPy's BLAS would run on one thread here): for callers whose best way to cut
    a product differs between the two libraries.

    Returns:
        True when MKL would take a product of float32, row- or column-contiguous operands.
    """
    if not _decided:
        backend()
    return _sgemm is not None and _parallel.blas_single_threaded()


def _layout(rows: int, cols: int, rs: int, cs: int):
    """(CBLAS transpose flag, leading dimension) of a float32 matrix with these byte
    strides, or None when it is neither row- nor column-contiguous (sizes >= 1)."""
    if cs == 4 or cols == 1:
        if rows == 1:
            return _NO_TRANS, cols
        if rs >= 4 * cols and rs % 4 == 0:
            return _NO_TRANS, rs // 4
    if rs == 4 or rows == 1:
        if cs >= 4 * rows and cs % 4 == 0:
            return _TRANS, cs // 4
    return None


def _batch_stride(arr: np.ndarray) -> int | None:
    """Elements between the matrices of a stack (0 for a 2-D array or a stack of one)."""
    if arr.ndim == 2 or arr.shape[0] == 1:
        return 0
    s = arr.strides[0]
    return s // 4 if s >= 0 and s % 4 == 0 else None


def _flip(layout):
    """The layout of the transposed matrix: the same memory read the other way."""
    return (_TRANS if layout[0] == _NO_TRANS else _NO_TRANS), layout[1]


def _plan(a: np.ndarray, b: np.ndarray, out: np.ndarray | None):
    """The checked arguments of an MKL call for ``np.matmul(a, b, out)`` (out allocated
    here when None): (out, batch, M, N, K, a side, b side, ldc, stride c), each side a
    (layout, array, stride); or None when MKL cannot take it as it is."""
    if a.dtype != _F32 or b.dtype != _F32:
        return None
    if not (2 <= a.ndim <= 3 and 2 <= b.ndim <= 3):
        return None
    m, k = a.shape[-2:]
    k2, n = b.shape[-2:]
    ba = a.shape[0] if a.ndim == 3 else 1
    bb = b.shape[0] if b.ndim == 3 else 1
    if k != k2 or (ba != bb and ba != 1 and bb != 1):
        return None
    batch = max(ba, bb)
    if m == 0 or n == 0 or k == 0 or batch == 0 or max(m, n, k, batch) > _INT_MAX:
        return None
    la = _layout(m, k, a.strides[-2], a.strides[-1])
    lb = _layout(k, n, b.strides[-2], b.strides[-1])
    sa, sb = _batch_stride(a), _batch_stride(b)
    if la is None or lb is None or sa is None or sb is None or not (a.flags.aligned and b.flags.aligned):
        return None
    shape = (m, n) if a.ndim == 2 and b.ndim == 2 else (batch, m, n)
    if out is None:
        out = np.empty(shape, _F32)
    elif (out.shape != shape or out.dtype != _F32 or not out.flags.writeable or not out.flags.aligned
          or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        return None
    lc = _layout(m, n, out.strides[-2], out.strides[-1])
    sc = _batch_stride(out)
    if lc is None or sc is None:
        return None
    if sc == 0 and batch > 1:
        return None
    if lc[0] == _TRANS:
        # A column-major output is the row-major C^T = B^T A^T.
        m, n = n, m
        (la, a, sa), (lb, b, sb) = (_flip(lb), b, sb), (_flip(la), a, sa)
    if max(la[1], lb[1], lc[1], sa, sb, sc) > _INT_MAX:
        return None
    return out, batch, m, n, k, (la, a, sa), (lb, b, sb), lc[1], sc


def _numpy_matmul(a, b, out, accumulate):
    if not accumulate:
        return np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
    out += np.matmul(a, b)
    return out


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           accumulate: bool = False) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, by MKL for float32 2-D / 3-D operands.

    Args:
        a: (M, K) or (B, M, K); b: (K, N) or (B, K, N) (a stack of one broadcasts).
        out: optional result array of the product's shape; None allocates a C-contiguous one.
        accumulate: ``out += a @ b`` instead (``out`` required). MKL adds in place (its
            beta = 1: no temporary, no extra pass); NumPy computes the product, then adds.

    Returns:
        ``out`` (or the new array) holding ``a @ b`` (or the sum).
    """
    if accumulate and out is None:
        raise ValueError("matmul: accumulate=True needs an out array")
    if not _decided:
        backend()
    sgemm = _sgemm
    if (sgemm is None or not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray)
            or a.ndim < 2 or b.ndim < 2 or (a.size * b.shape[-1] < MIN_MACS and not accumulate)
            or not _parallel.blas_single_threaded()):
        # (Small sums stay on MKL: NumPy's product and add cost more than the call.)
        return _numpy_matmul(a, b, out, accumulate)
    plan = _plan(a, b, out)
    if plan is None:
        return _numpy_matmul(a, b, out, accumulate)
    res, batch, m, n, k, ((ta, lda), a, sa), ((tb, ldb), b, sb), ldc, sc = plan
    beta = 1.0 if accumulate else 0.0
    if batch == 1:
        sgemm(_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb,
              beta, res.ctypes.data, ldc)
    elif sc < ldc * m:
        # Interleaved outputs (a grouped convolution's (G, M, Og) view of (M, G*Og)):
        # the batched call wants every C in an address range of its own.
        pa, pb, pc = a.ctypes.data, b.ctypes.data, res.ctypes.data
        for i in range(batch):
            sgemm(_ROW_MAJOR, ta, tb, m, n, k, 1.0, pa + 4 * sa * i, lda, pb + 4 * sb * i, ldb,
                  beta, pc + 4 * sc * i, ldc)
    else:
        _sgemm_batch(_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, sa, b.ctypes.data, ldb, sb,
                     beta, res.ctypes.data, ldc, sc, batch)
    return res
