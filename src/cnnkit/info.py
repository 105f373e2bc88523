"""``cnnkit info`` (and ``cnnkit --version``): what this installation runs on, and why.

Three choices decide cnnkit's speed on a machine: the GEMM library of the convolutions
(``nn._gemm``: NumPy's BLAS or MKL, whichever measured faster here), the compiled kernels
(``nn._jit``: Numba, or the NumPy code when it cannot be used) and the number of threads
(``cnnkit.set_num_threads``). Each line says what is used and what chose it.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np

from . import __version__


def describe() -> list[tuple[str, str, str]]:
    """(setting, value, why) for the GEMM backend, the compiled kernels and the threads.

    Returns:
        One row per setting; ``why`` names the environment variable, call or measurement
        that chose the value.
    """
    from .nn import _gemm, _jit, _parallel

    gemm, gemm_why = _gemm.backend()
    jit_on, jit_why = _jit.status()
    threads, threads_why = _parallel.threads_status()
    kernels = "compiled (Numba)" if jit_on else "NumPy only"
    if jit_on:
        jit_why += "; CNNKIT_JIT=0 turns them off"
    return [
        ("GEMM backend", "MKL" if gemm == "mkl" else "NumPy's BLAS", gemm_why),
        ("kernels", kernels, jit_why),
        ("threads", str(threads), threads_why + "; CNNKIT_NUM_THREADS or --threads set it"),
    ]


def report() -> str:
    """The text ``cnnkit info`` prints: versions, CPU, then ``describe()``'s rows."""
    from .nn._gemm import _cpu_name

    lines = [f"cnnkit {__version__} (Python {platform.python_version()}, NumPy {np.__version__})",
             f"CPU: {_cpu_name()} ({platform.machine()})"]
    for name, value, why in describe():
        lines.append(f"{name}: {value} ({why})")
    from .distributed import describe as mpi_world

    lines.append(mpi_world())
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """``--version``: the version line and what the installation runs on, then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the version, GEMM backend, kernels and threads, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(report())
        parser.exit()


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cnnkit info``."""
    p = subparsers.add_parser(
        "info", help="versions, CPU, GEMM backend, compiled kernels and threads, and why each was chosen",
        description="Print cnnkit's version, the CPU, the GEMM backend, the compiled kernels, the thread "
                    "count and the MPI world (under mpiexec), each with why it was chosen.")
    p.set_defaults(func=lambda args: print(report()) or 0)
    return p
