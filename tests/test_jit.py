"""nn._jit: the optional Numba switch, its reasons, and the NumPy fallback."""

import subprocess
import sys

import numpy as np
import pytest

from cnnkit.nn import _jit


@pytest.fixture
def restore_default():
    yield
    _jit.set_enabled(None)


def test_set_enabled_false_turns_the_kernels_off_and_says_why(restore_default):
    _jit.set_enabled(False)
    assert _jit.status() == (False, "set_enabled(False)")
    assert not _jit.enabled()


def test_a_kernel_refuses_to_run_when_off(restore_default):
    double = _jit.kernel(lambda a: 2 * a)
    _jit.set_enabled(False)
    with pytest.raises(RuntimeError, match="compiled kernels are off"):
        double(np.ones(3))
    assert double.py_func(3) == 6          # the plain function stays callable


def test_missing_numba_falls_back_with_a_reason(restore_default, monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)       # import numba -> ImportError
    _jit.set_enabled(None)
    on, why = _jit.status()
    assert not on and "numba not available" in why and "NumPy kernels run" in why
    with pytest.raises(RuntimeError, match="numba not available"):
        _jit.set_enabled(True)
    assert not _jit.enabled()


def test_environment_variable_turns_it_off():
    code = "from cnnkit.nn import _jit; print(_jit.status())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "CNNKIT_JIT": "0"}).stdout
    assert out.strip() == "(False, 'CNNKIT_JIT=0')"


def test_bad_flag_is_refused():
    with pytest.raises(ValueError, match="expected True, False or None"):
        _jit.set_enabled("yes")


def test_a_kernel_compiles_and_runs(restore_default):
    pytest.importorskip("numba")
    _jit.set_enabled(True)

    @_jit.kernel
    def add_into(a, b):
        for i in range(a.shape[0]):
            a[i] += b[i]

    a, b = np.arange(4.0, dtype=np.float32), np.ones(4, np.float32)
    add_into(a, b)
    np.testing.assert_array_equal(a, [1, 2, 3, 4])
    assert _jit.status()[1].startswith("numba ")
