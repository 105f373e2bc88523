"""How nn._gemm picks its backend: CNNKIT_BLAS / set_backend first, else the library that
measured faster on this machine (probed once, cached per CPU and library versions); the mere
presence of the mkl package never decides. MKL itself is faked here: these tests run the
same on machines with and without it."""

import json

import numpy as np
import pytest

from cnnkit.nn import _gemm, _parallel


@pytest.fixture
def fake_mkl(monkeypatch, tmp_path):
    """An importable "MKL" (stub functions), an empty cache under a temporary HOME, and a
    probe whose timings the test sets: yields the list of probe calls' results to return."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CNNKIT_BLAS", raising=False)
    monkeypatch.setattr(_gemm, "_loaded", None)
    monkeypatch.setattr(_gemm, "_load_mkl", lambda: (lambda *a: None, lambda *a: None, "/fake/libmkl_rt.so"))
    real_version = _gemm.importlib.metadata.version
    monkeypatch.setattr(_gemm.importlib.metadata, "version",
                        lambda name: "2099.0" if name == "mkl" else real_version(name))
    if _parallel._blas is None:
        monkeypatch.setattr(_parallel, "_blas", (lambda n: None, lambda: 1))
    timings = []

    def probe(sgemm):
        assert timings, "the backend was probed although a cached choice exists"
        return timings.pop(0)

    monkeypatch.setattr(_gemm, "_probe", probe)
    return timings


def test_mkl_chosen_where_it_measured_faster_and_the_choice_is_cached(fake_mkl, tmp_path):
    fake_mkl.append((10.0, 6.0))                      # NumPy ms, MKL ms
    _gemm.set_backend(None)
    name, why = _gemm.backend()
    assert name == "mkl" and "1.67x" in why and "measured now" in why
    cache = tmp_path / ".cache" / "cnnkit" / "blas" / "choice.json"
    entry, = json.loads(cache.read_text()).values()
    assert entry == {"backend": "mkl", "numpy_ms": 10.0, "mkl_ms": 6.0}
    _gemm.set_backend(None)                           # a new decision reads the cache: no probe
    name, why = _gemm.backend()
    assert name == "mkl" and "cached in" in why


def test_numpy_kept_where_mkl_is_slower_or_barely_faster(fake_mkl):
    fake_mkl.append((10.0, 14.0))                     # MKL slower (AMD CPUs)
    _gemm.set_backend(None)
    assert _gemm.backend()[0] == "numpy" and not _gemm.mkl_active()
    assert "0.71x" in _gemm.backend()[1]


def test_a_tie_keeps_numpy(fake_mkl, monkeypatch):
    monkeypatch.setattr(_gemm, "_cache_key", lambda: "tie")
    fake_mkl.append((10.0, 9.8))                      # within the 5 % margin
    _gemm.set_backend(None)
    assert _gemm.backend()[0] == "numpy"


def test_a_corrupt_cache_is_measured_again(fake_mkl, tmp_path):
    cache = tmp_path / ".cache" / "cnnkit" / "blas" / "choice.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    fake_mkl.append((10.0, 5.0))
    _gemm.set_backend(None)
    assert _gemm.backend()[0] == "mkl"
    assert len(json.loads(cache.read_text())) == 1


@pytest.mark.parametrize("value,expected", [("numpy", "numpy"), ("openblas", "numpy"), ("mkl", "mkl"),
                                            (" MKL ", "mkl")])
def test_the_environment_overrides_the_measurement(fake_mkl, monkeypatch, value, expected):
    monkeypatch.setenv("CNNKIT_BLAS", value)
    _gemm.set_backend(None)                           # no probe: fake_mkl has no timings
    name, why = _gemm.backend()
    assert name == expected and "CNNKIT_BLAS=" in why


def test_a_bad_environment_value_is_an_error_naming_the_variable(fake_mkl, monkeypatch):
    monkeypatch.setenv("CNNKIT_BLAS", "fastest")
    with pytest.raises(ValueError, match="CNNKIT_BLAS: expected numpy, mkl or auto, found 'fastest'"):
        _gemm.set_backend(None)


def test_without_mkl_numpy_runs_and_says_why(monkeypatch):
    monkeypatch.delenv("CNNKIT_BLAS", raising=False)
    monkeypatch.setattr(_gemm, "_loaded", None)

    def missing():
        raise RuntimeError("mkl not installed (a dependency on x86-64 Linux and Windows only)")

    monkeypatch.setattr(_gemm, "_load_mkl", missing)
    _gemm.set_backend(None)
    assert _gemm.backend() == ("numpy", "mkl not installed (a dependency on x86-64 Linux and Windows only)")
    with pytest.raises(RuntimeError, match="mkl not installed"):
        _gemm.set_backend("mkl")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_gemm.matmul(a, a.T), a @ a.T)


def test_the_real_probe_times_both_libraries_when_mkl_is_installed():
    try:
        loaded = _gemm._loaded or _gemm._load_mkl()
    except RuntimeError as e:
        pytest.skip(f"mkl not installed here: {e}")
    if _parallel._blas is None:
        pytest.skip("NumPy's OpenBLAS not found: MKL is never used")
    threads = _parallel._blas[1]()
    numpy_ms, mkl_ms = _gemm._probe(loaded[0])
    assert numpy_ms > 0 and mkl_ms > 0
    assert _parallel._blas[1]() == threads            # NumPy's BLAS threads given back
