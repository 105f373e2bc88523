"""nn._gemm.matmul: np.matmul's results for every operand layout, on MKL and on NumPy,
with the fallbacks; and a convolution / linear net agreeing between the two backends."""

import numpy as np
import pytest

import cnnkit
import cnnkit.nn as nn
from cnnkit.nn import _gemm, _parallel

def _rand(shape, dtype=np.float32, salt=0):
    """Uniform test data seeded by its shape (and ``salt``): the same values whichever tests
    ran before, and whichever run alone."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    rng = np.random.default_rng([*shape, np.dtype(dtype).num, salt])
    return rng.uniform(-1, 1, size=shape).astype(dtype)


def _f_order(shape):
    """A column-major (Fortran-order) float32 array of this 2-D shape."""
    return np.asfortranarray(_rand(shape))


def _reference(a, b):
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def _check(res, a, b):
    assert res.dtype == np.result_type(a, b)
    np.testing.assert_allclose(res, _reference(a, b), rtol=1e-5, atol=2e-5 * np.sqrt(a.shape[-1]))


@pytest.fixture
def mkl_calls(monkeypatch):
    """MKL as the backend, every product routed to it (no size threshold, BLAS taken as
    single-threaded), with a count of the MKL calls made. Skips when MKL is absent."""
    try:
        _gemm.set_backend("mkl")
    except RuntimeError as e:
        _gemm.set_backend(None)
        pytest.skip(f"mkl not installed ({e})")
    calls = []
    sgemm, batch = _gemm._sgemm, _gemm._sgemm_batch
    monkeypatch.setattr(_gemm, "_sgemm", lambda *args: (calls.append("sgemm"), sgemm(*args)))
    monkeypatch.setattr(_gemm, "_sgemm_batch", lambda *args: (calls.append("batch"), batch(*args)))
    monkeypatch.setattr(_gemm, "MIN_MACS", 0)
    monkeypatch.setattr(_parallel, "blas_single_threaded", lambda: True)
    yield calls
    _gemm.set_backend(None)


@pytest.fixture(params=["mkl", "numpy"])
def backend(request, monkeypatch):
    """Each test under both backends (the MKL one skipped when MKL is absent)."""
    if request.param == "mkl":
        request.getfixturevalue("mkl_calls")
    else:
        _gemm.set_backend("numpy")
        yield request.param
        _gemm.set_backend(None)
        return
    yield request.param


# (name, a, b): 2-D operands in every layout MKL takes directly.
_WIDE = _rand((40, 70))
_WIDE_F = _f_order((70, 40))
LAYOUTS_2D = [
    ("C@C", _rand((37, 29)), _rand((29, 23))),
    ("F@F", _f_order((37, 29)), _f_order((29, 23))),
    ("C@F", _rand((37, 29)), _f_order((29, 23))),
    ("transposed views", _rand((29, 37)).T, _rand((23, 29)).T),
    ("row blocks (ld > cols)", _WIDE[:, 5:34], _WIDE[3:32, :23]),
    ("column blocks of F (ld > rows)", _WIDE_F[4:41, :29], _WIDE_F[:29, 10:33]),
    ("one row", _rand((1, 29)), _rand((29, 23))),
    ("one column", _rand((37, 29)), _rand((29, 1))),
    ("strided single row", _WIDE[:, ::2][:1, :29], _rand((29, 5))),
    ("K = 1", _rand((37, 1)), _rand((1, 23))),
]


@pytest.mark.parametrize("name,a,b", LAYOUTS_2D, ids=[c[0] for c in LAYOUTS_2D])
def test_2d_layouts(backend, name, a, b):
    _check(_gemm.matmul(a, b), a, b)
    out = np.full((a.shape[0], b.shape[1]), np.nan, np.float32)
    assert _gemm.matmul(a, b, out=out) is out
    _check(out, a, b)


@pytest.mark.parametrize("out_kind", ["F", "column block", "row block"])
def test_2d_out_layouts(backend, out_kind):
    """``out`` may be column-major (C^T = B^T A^T is computed) or a block of a wider array."""
    a, b = _rand((31, 17)), _f_order((17, 13))
    if out_kind == "F":
        out = np.asfortranarray(np.zeros((31, 13), np.float32))
    elif out_kind == "column block":
        out = np.zeros((31, 20), np.float32)[:, 4:17]
    else:
        out = np.zeros((40, 13), np.float32).T[:, 5:36].T
    assert _gemm.matmul(a, b, out=out) is out
    _check(out, a, b)


def _stack_t(shape):
    """A (B, R, C) stack whose matrices are column-major (transposed views)."""
    return _rand((shape[0], shape[2], shape[1])).transpose(0, 2, 1)


STACKS = [
    ("3d@3d", _rand((5, 19, 11)), _rand((5, 11, 7))),
    ("3d@3d transposed", _stack_t((5, 19, 11)), _stack_t((5, 11, 7))),
    ("3d@2d", _rand((4, 19, 11)), _rand((11, 7))),
    ("3d@2d F", _rand((4, 19, 11)), _f_order((11, 7))),
    ("2d@3d", _rand((19, 11)), _rand((4, 11, 7))),
    ("broadcast stack of one", _rand((1, 19, 11)), _rand((6, 11, 7))),
    ("stack of one", _rand((1, 19, 11)), _rand((1, 11, 7))),
    ("winograd-like", _rand((16, 33, 24)), _rand((16, 20, 24)).transpose(0, 2, 1)),
    ("interleaved stacks", _rand((19, 3, 11)).transpose(1, 0, 2), _rand((7, 3, 11)).transpose(1, 2, 0)),
]


@pytest.mark.parametrize("name,a,b", STACKS, ids=[c[0] for c in STACKS])
def test_stacked(backend, name, a, b):
    res = _gemm.matmul(a, b)
    assert res.shape == np.matmul(a, b).shape
    _check(res, a, b)
    out = np.full(res.shape, np.nan, np.float32)
    assert _gemm.matmul(a, b, out=out) is out
    _check(out, a, b)


@pytest.mark.parametrize("transposed", [False, True])
def test_stacked_out_view_with_batch_stride(backend, transposed):
    """The grouped convolution's output: (G, M, Og) view of an (M, G*Og) array (MKL's
    batched call refuses interleaved outputs: one call per matrix), or its transpose."""
    a, b = _rand((3, 21, 10)), _rand((3, 10, 4))
    dst = np.zeros((21, 12), np.float32)
    out = dst.reshape(21, 3, 4).transpose(1, 0, 2)
    if transposed:
        a, b = b.transpose(0, 2, 1), a.transpose(0, 2, 1)
        out = out.transpose(0, 2, 1)
    _gemm.matmul(a, b, out=out)
    _check(out, a, b)


def test_mkl_takes_the_layouts(mkl_calls):
    """The layouts above really run on MKL (no silent fallback): one call each."""
    for _, a, b in LAYOUTS_2D:
        _gemm.matmul(a, b)
    assert mkl_calls == ["sgemm"] * len(LAYOUTS_2D)
    mkl_calls.clear()
    for name, a, b in STACKS:
        _gemm.matmul(a, b)
    assert mkl_calls == ["sgemm" if name.startswith("stack of one") else "batch" for name, _, _ in STACKS]


FALLBACKS = [
    ("float64", _rand((9, 8), np.float64), _rand((8, 7), np.float64)),
    ("mixed float32 / float64", _rand((9, 8)), _rand((8, 7), np.float64)),
    ("int", np.arange(72).reshape(9, 8), np.arange(56).reshape(8, 7)),
    ("strided both axes", _rand((18, 16))[::2, ::2], _rand((8, 7))),
    ("negative stride", _rand((9, 8))[::-1], _rand((8, 7))),
    ("1-d", _rand((8,)), _rand((8, 7))),
    ("4-d", _rand((2, 3, 9, 8)), _rand((8, 7))),
    ("zero rows", _rand((0, 8)), _rand((8, 7))),
    ("zero depth", _rand((9, 0)), _rand((0, 7))),
    ("empty stack", _rand((0, 9, 8)), _rand((8, 7))),
]


@pytest.mark.parametrize("name,a,b", FALLBACKS, ids=[c[0] for c in FALLBACKS])
def test_fallbacks_match_numpy(mkl_calls, name, a, b):
    expected = np.matmul(a, b)
    res = _gemm.matmul(a, b)
    assert res.dtype == expected.dtype and res.shape == expected.shape
    np.testing.assert_allclose(res, expected, rtol=1e-6)
    assert mkl_calls == []


def test_overlapping_out_falls_back(mkl_calls):
    """An ``out`` that is also an operand: np.matmul's buffered semantics, not MKL's."""
    a = _rand((8, 8))
    b = _rand((8, 8), salt=1)
    expected = a @ b
    _gemm.matmul(a, b, out=a)
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    assert mkl_calls == []


def test_errors_are_numpy_errors(backend):
    with pytest.raises(ValueError):
        _gemm.matmul(_rand((3, 4)), _rand((5, 2)))
    with pytest.raises(ValueError):
        _gemm.matmul(_rand((3, 4)), _rand((4, 2)), out=np.empty((2, 3), np.float32))


def test_outside_single_threaded_blas_numpy_runs(mkl_calls, monkeypatch):
    """Where NumPy's BLAS would use several threads, a sequential MKL would lose them."""
    monkeypatch.setattr(_parallel, "blas_single_threaded", lambda: False)
    a, b = _rand((30, 20)), _rand((20, 10))
    _check(_gemm.matmul(a, b), a, b)
    assert mkl_calls == [] and not _gemm.mkl_active()


def test_small_products_stay_on_numpy(mkl_calls, monkeypatch):
    monkeypatch.setattr(_gemm, "MIN_MACS", 1 << 22)
    a, b = _rand((64, 256)), _rand((256, 10))
    _check(_gemm.matmul(a, b), a, b)
    assert mkl_calls == []
    a, b = _rand((512, 288)), _rand((288, 32))
    _check(_gemm.matmul(a, b), a, b)
    assert mkl_calls == ["sgemm"]


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("CNNKIT_BLAS", "numpy")
    _gemm.set_backend(None)
    try:
        assert _gemm.backend() == ("numpy", "CNNKIT_BLAS=numpy")
        assert not _gemm.mkl_active()
        _gemm.set_backend("numpy")
        assert _gemm.backend()[0] == "numpy"
        with pytest.raises(ValueError):
            _gemm.set_backend("openblas")
    finally:
        monkeypatch.delenv("CNNKIT_BLAS")
        _gemm.set_backend(None)
    name, why = _gemm.backend()
    assert name in ("mkl", "numpy") and why


def _net_run():
    """Outputs and all gradients of a small net whose layers take each routed kernel:
    channels-first columns, row blocks, im2col + narrow GEMM, Winograd, pointwise,
    grouped, col2im input gradient and Linear."""
    cnnkit.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),                 # channels-first columns
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),                # im2col, narrow GEMM
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),      # col2im input gradient
        nn.Conv2d(32, 64, 1), nn.ReLU(),                           # pointwise
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),               # Winograd
        nn.Conv2d(128, 64, 3, padding=1, groups=2), nn.ReLU(),     # grouped
        nn.Flatten(), nn.Linear(64 * 14 * 14, 10),
    )
    x = np.random.default_rng(1).random((8, 1, 28, 28), dtype=np.float32)
    out = model(x)
    gx = model.backward(np.ones_like(out) / out.size)
    return [out, gx] + [p.grad for p in model.parameters()]


def test_conv_net_agrees_between_backends(mkl_calls):
    with_mkl = _net_run()
    assert "sgemm" in mkl_calls and "batch" in mkl_calls
    _gemm.set_backend("numpy")
    with_numpy = _net_run()
    for m, n in zip(with_mkl, with_numpy):
        assert m.dtype == np.float32
        np.testing.assert_allclose(m, n, rtol=1e-4, atol=1e-5 * np.abs(n).max())


def test_public_backend_name():
    import cnnkit.nn as nn
    name, why = nn.gemm_backend()
    assert name in ("mkl", "numpy") and isinstance(why, str) and why
    assert (name, why) == _gemm.backend()


@pytest.mark.parametrize("stacked", [False, True])
def test_accumulate_adds_into_out(backend, stacked):
    """``accumulate=True``: out += a @ b (MKL's beta = 1), for a plain product and for a
    stack whose operands are strided views (the row-tap convolution's shifted rows)."""
    if stacked:
        base = _rand((4 * 9 * 5 + 10,))
        a = np.lib.stride_tricks.as_strided(base[5:], (4, 6, 5), (9 * 5 * 4, 5 * 4, 4))   # overlapping-free rows
        b = _rand((5, 3))
        start = _rand((4, 6, 3))
    else:
        a, b, start = _rand((37, 29)), _rand((29, 23)), _rand((37, 23))
    out = start.copy()
    assert _gemm.matmul(a, b, out=out, accumulate=True) is out
    np.testing.assert_allclose(out, start + _reference(a, b), rtol=1e-5, atol=1e-5 * np.sqrt(a.shape[-1]))


def test_accumulate_runs_on_mkl_even_when_small(mkl_calls, monkeypatch):
    """A small product to add stays on MKL (NumPy would need a temporary and a pass)."""
    monkeypatch.setattr(_gemm, "MIN_MACS", 1 << 22)
    a, b = _rand((8, 6)), _rand((6, 4))
    out = np.zeros((8, 4), np.float32)
    _gemm.matmul(a, b, out=out, accumulate=True)
    assert mkl_calls == ["sgemm"]
    _check(out, a, b)


def test_accumulate_needs_out():
    with pytest.raises(ValueError, match="accumulate=True needs an out array"):
        _gemm.matmul(_rand((3, 4)), _rand((4, 2)), accumulate=True)


def test_mkl_keeps_no_buffers_of_its_own_after_products(mkl_calls):
    """cnnkit turns MKL's memory manager off when it loads MKL (see ``_gemm._load_mkl``):
    the packing buffers of each product are freed, not kept for reuse, which measured 30-35
    MB less peak training memory on the VGG benchmark. ``mkl_mem_stat`` counts the bytes the
    manager holds."""
    import ctypes
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 300)).astype(np.float32)
    b = rng.standard_normal((300, 256)).astype(np.float32)
    _check(_gemm.matmul(a, b), a, b)
    assert mkl_calls == ["sgemm"]
    lib = ctypes.CDLL(_gemm._loaded[2])
    lib.mkl_mem_stat.restype = ctypes.c_int64
    buffers = ctypes.c_int(0)
    assert lib.mkl_mem_stat(ctypes.byref(buffers)) == 0 and buffers.value == 0
