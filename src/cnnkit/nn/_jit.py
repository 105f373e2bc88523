"""Optional compiled kernels through Numba, for the few steps NumPy runs badly.

Why: NumPy pays a fixed cost per inner loop, and some steps of a small CNN only have short
inner loops. 2x2 max pooling in NHWC compares runs of C values (C = 10-64 channels) at
every output pixel: its winning-tap index and its gradient scatter are a few NumPy calls
each, but every call steps through N*Ho*Wo inner loops of C values. Compiled, the same loops
run at memory speed. One thread, 32 images, ms (NumPy / Numba):

================================  =============  ===============
pool input (N, H, W, C)           index forward  gradient scatter
================================  =============  ===============
(32, 24, 24, 10)  LeNet conv1     0.218 / 0.095  0.237 / 0.053
(32, 28, 28, 32)  4-conv conv2    0.774 / 0.144  1.028 / 0.159
(32, 14, 14, 64)  4-conv conv4    0.310 / 0.042  0.398 / 0.046
================================  =============  ===============

The same holds for the other compiled steps: 2x2 average pooling (``_jit_pool``), the
convolutions' column copies and row-tap adds (``_jit_conv``), their output pass and folded
ReLU backward (``_jit_epilogue``) and Winograd's tile transforms (``_jit_winograd``).

The kernels are compiled with ``nogil=True``: the thread pool's threads (``_parallel``) run
them side by side without handing the GIL to each other, and on these VMs every GIL
hand-over between two busy threads costs a vCPU wake-up (40-90 us).

What a kernel is: a plain Python function over NumPy arrays, readable as it is, wrapped by
``kernel``; Numba compiles it on its first call (``njit(nogil=True, cache=True)``: the
machine code is cached on disk, so only the first process pays the ~1 s per signature).
Numba is imported on that first call, not when cnnkit is imported.

Fallback: the NumPy code, silently, when Numba is not installed or does not import, when
``CNNKIT_JIT=0`` is in the environment, or after ``set_enabled(False)``. ``status()`` says
which and why. Both paths compute the same values bit for bit, except Winograd's transforms
(their adds run in another order: float32 rounding apart); the tests run both.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

__all__ = ["kernel", "enabled", "status", "set_enabled"]

_lock = threading.Lock()
_decided = False
_numba = None            # the numba module once it imported, else None
_reason = ""
_forced: bool | None = None


def _decide() -> None:
    global _decided, _numba, _reason
    env = os.environ.get("CNNKIT_JIT", "").strip().lower()
    want = _forced if _forced is not None else env not in ("0", "false", "no", "off")
    _numba = None
    if not want:
        _reason = "set_enabled(False)" if _forced is False else f"CNNKIT_JIT={env}"
    else:
        try:
            import numba
        except Exception as e:  # noqa: BLE001 - any import failure means: no accelerator
            _reason = f"numba not available ({type(e).__name__}: {e}); the NumPy kernels run"
        else:
            _numba = numba
            _reason = f"numba {numba.__version__}"
    _decided = True


def status() -> tuple[bool, str]:
    """Whether the compiled kernels are used.

    Returns:
        (True, "numba <version>") or (False, why not).
    """
    with _lock:
        if not _decided:
            _decide()
        return _numba is not None, _reason


def enabled() -> bool:
    """Whether the compiled kernels are used (see ``status``)."""
    if not _decided:
        status()
    return _numba is not None


def set_enabled(flag: bool | None) -> None:
    """Use the compiled kernels (True: raises RuntimeError when Numba cannot be imported),
    the NumPy ones (False), or the environment's choice (None). For tests and benchmarks."""
    global _forced
    if flag not in (True, False, None):
        raise ValueError(f"set_enabled: expected True, False or None, got {flag!r}")
    with _lock:
        _forced = flag
        _decide()
        if flag and _numba is None:
            raise RuntimeError(_reason)


class _Kernel:
    """A Python function compiled by Numba on its first call (see the module docstring)."""

    def __init__(self, fn: Callable):
        self.py_func = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._compiled = None

    def __call__(self, *args):
        compiled = self._compiled
        if compiled is None:
            compiled = self.dispatcher()
        return compiled(*args)

    def dispatcher(self):
        """The Numba dispatcher (compiled on its first call); other compiled kernels call it
        from their own machine code, without coming back to Python."""
        if self._compiled is None:
            if not enabled():
                raise RuntimeError(f"{self.__name__}: compiled kernels are off ({status()[1]}); "
                                   "callers check jit.enabled() first")
            from . import _jit_memcpy
            _jit_memcpy.register()       # before the lock: it takes its own
            with _lock:
                if self._compiled is None:
                    self._compiled = _numba.njit(nogil=True, cache=True)(self.py_func)
        return self._compiled


def kernel(fn: Callable) -> _Kernel:
    """Decorator: ``fn`` becomes a kernel compiled on first call. Callers ask ``enabled()``
    first and run their NumPy code otherwise; ``kernel.py_func`` is the plain function."""
    return _Kernel(fn)
