"""MKL's ``cblas_sgemm`` callable from compiled kernels, for the ones that run a thread's
whole share of a convolution in one call (``_jit_row_taps``, ``_jit_weight_grad``).

Why: a kernel that goes back to Python between its steps takes the GIL back each time; with
two busy threads one often finds it taken and sleeps, and on VMs whose idle vCPUs halt at
once, waking it costs 40-90 us. Numba calls a ctypes function pointer from machine code,
so a kernel can do its copies, its GEMMs and its output pass without the GIL.

Only MKL, through the address ``_gemm`` loaded it at: its LP64 interface (32-bit ints) and
sequential threading layer are fixed there. Pointers are passed as integers (what Numba's
``array.ctypes.data`` gives).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from . import _gemm, _jit

#: CBLAS constants: row-major storage, no transpose, transpose.
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
#: Largest dimension or leading dimension MKL's LP64 interface takes.
INT_MAX = 2 ** 31 - 1
_I, _F, _P = ctypes.c_int, ctypes.c_float, ctypes.c_size_t
_SGEMM_TYPE = ctypes.CFUNCTYPE(None, _I, _I, _I, _I, _I, _I, _F, _P, _I, _P, _I, _F, _P, _I)

_lock = threading.Lock()
_sgemm = None            # (address, the ctypes function Numba calls)


def available() -> bool:
    """Whether a compiled kernel may call ``sgemm()`` here and now: compiled kernels on,
    MKL the backend, and NumPy's BLAS single-threaded here (inside the thread pool), as
    for every product ``_gemm`` gives MKL."""
    return _jit.enabled() and _gemm.mkl_active() and _gemm.sgemm_address() is not None


def sgemm():
    """``cblas_sgemm(layout, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)``
    of the MKL loaded now, as a ctypes function a Numba kernel takes as an argument."""
    global _sgemm
    address = _gemm.sgemm_address()
    if address is None:
        raise RuntimeError("sgemm: MKL is not the GEMM backend (callers check available() first)")
    if _sgemm is None or _sgemm[0] != address:
        with _lock:
            if _sgemm is None or _sgemm[0] != address:
                _sgemm = (address, _SGEMM_TYPE(address))
    return _sgemm[1]


def fits(*arrays: np.ndarray) -> bool:
    """Float32 arrays small enough for 32-bit sizes (each array's element count)."""
    return all(a.dtype == np.float32 and a.size <= INT_MAX for a in arrays)
