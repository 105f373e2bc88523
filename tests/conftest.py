"""What every test shares: each test starts from the process's default settings, and CI turns
the skips of missing references into failures.

Settings: the thread count, the GEMM backend and the compiled-kernel switch are process-wide.
A test that changes one (``set_num_threads(1)``, ``set_backend("mkl")``) must not decide what
the tests after it run on, so each is put back after every test.

Skips: without the test-only references (PyTorch for parity, the reference EfficientNet
code, scikit-image's sample images, the real Fashion-MNIST files) their tests skip, and the
reason says what is missing. ``.ci/run`` installs them all and sets
``CNNKIT_REQUIRE_REFERENCES=1``: there a skip for a missing reference is a failure, so that a
broken install cannot pass as a green run with hundreds of tests silently left out.
"""

from __future__ import annotations

import os
import platform

import pytest

from cnnkit.nn import _gemm, _jit, _parallel

#: Skip reasons that mean "a reference CI installs is missing" (pytest.importorskip's text,
#: and the tests' own messages for data and weights).
_MISSING_REFERENCE = ("could not import", "not installed", "not found", "not available")
#: Skips that depend on the platform, not on an install: never turned into failures.
_PLATFORM_SKIPS = ("no fork on this platform", "NumPy's OpenBLAS not found")
if platform.machine() not in ("x86_64", "AMD64"):
    _PLATFORM_SKIPS += ("mkl not installed",)       # a dependency on x86-64 only


def _references_required() -> bool:
    return os.environ.get("CNNKIT_REQUIRE_REFERENCES", "").strip() not in ("", "0")


@pytest.fixture(autouse=True)
def _default_settings():
    """Run the test, then restore the thread count, GEMM backend and compiled-kernel switch
    it may have changed."""
    threads = _parallel._num_threads
    gemm = (_gemm._sgemm, _gemm._sgemm_batch, _gemm._decided, _gemm._reason)
    jit = (_jit._forced, _jit._decided, _jit._numba, _jit._reason)
    yield
    if _parallel._num_threads != threads:
        # set_num_threads stops the old pool (and, for 1, gives NumPy's BLAS its threads
        # back); None then means the default again.
        _parallel.set_num_threads(threads or 1)
        _parallel._num_threads = threads
    _gemm._sgemm, _gemm._sgemm_batch, _gemm._decided, _gemm._reason = gemm
    _jit._forced, _jit._decided, _jit._numba, _jit._reason = jit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _references_required()) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(s in reason for s in _PLATFORM_SKIPS) or not any(s in reason for s in _MISSING_REFERENCE):
        return
    report.outcome = "failed"
    report.longrepr = (f"CNNKIT_REQUIRE_REFERENCES is set (CI installs every test reference), "
                       f"but this test skipped: {reason}")
