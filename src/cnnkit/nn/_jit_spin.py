"""The end of a parallel region without sleeping: a worker publishes "done" from compiled
code, and the caller watches for it without the GIL (``_thread_pool``).

Why: a caller that finishes its part first and waits on the worker's lock sleeps; on VMs
whose idle vCPUs halt at once (``cpuidle haltpoll`` with polling off, as on the machines we
measure on), waking it takes 40-60 us once the worker releases the lock. LeNet's training
step has six regions of 0.2-0.6 ms, and the caller slept through the end of nearly every
one. Here the caller spins (with the CPU's pause hint) on a flag the worker stores, as
OpenMP's threads spin before they block, for at most ``MAX_SPIN_CYCLES``; then it takes
the lock, which the worker released before it stored the flag. A pool with more threads
than the CPUs the process may use never spins (the worker may need the caller's CPU).

The GIL: the worker stores the flag from a compiled function, hence without the GIL, and
keeps spinning for ``HOLD_CYCLES`` before it returns to Python and asks for the GIL back.
The caller, which sees the flag at once, takes the GIL first and does not wait for it (a
wait for the GIL would be a sleep again); the worker has nothing left to do but to block.

The compiled side is ``_jit_atomics``.
"""

from __future__ import annotations

import threading

import numpy as np

from . import _jit

#: Longest caller spin before it falls back to the lock (~1-3 ms at 1-3 GHz). A worker that
#: ends later than that had a long part, and the lock's wake-up no longer matters. Shorter
#: cost LeNet's training 3 % (0.6 M cycles, ~0.23 ms here: some of its workers end later).
MAX_SPIN_CYCLES = 3_000_000
#: How long the worker stays away from the GIL after it stored the flag (a few us).
HOLD_CYCLES = 20_000

_lock = threading.Lock()
_built = None            # (publish, wait_for), compiled


def _functions():
    global _built
    if _built is None:
        with _lock:
            if _built is None:
                from . import _jit_atomics       # imports Numba: only once the pool needs it
                _built = (_jit_atomics.publish, _jit_atomics.wait_for)
    return _built


def available() -> bool:
    """Whether the spinning end can be used (compiled kernels on)."""
    return _jit.enabled()


def new_flag() -> np.ndarray:
    """A flag for ``publish`` and ``wait_for``: one int64, alone on a 64-byte cache line (a
    neighbour written by another core would slow the spin)."""
    raw = np.zeros(24, np.int64)                       # 192 bytes: a whole line inside
    start = (-raw.ctypes.data % 64) // 8
    return raw[start:start + 1]


def publish(flag: np.ndarray, value: int) -> None:
    """Store ``value`` into ``flag`` without the GIL, then stay away from it for a moment."""
    _functions()[0](flag, value, HOLD_CYCLES)


def wait_for(flag: np.ndarray, value: int) -> bool:
    """Spin without the GIL until ``flag`` holds ``value`` (True) or ``MAX_SPIN_CYCLES``
    passed (False)."""
    return _functions()[1](flag, value, MAX_SPIN_CYCLES)
