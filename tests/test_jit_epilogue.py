"""nn._jit_epilogue: the compiled bias-and-clip pass of ``finish_output`` gives the NumPy
path's bits (NaN, infinities and signed zeros included) and really runs."""

import numpy as np
import pytest

from cnnkit.nn import _epilogue, _jit, _jit_epilogue

from spy_helpers import count_calls

pytest.importorskip("numba")


def _values(rng, shape, dtype):
    x = rng.standard_normal(shape) * 4
    flat = x.reshape(-1)
    flat[:6] = [np.nan, -0.0, 0.0, np.inf, -np.inf, 6.0]
    return x.astype(dtype)


def _finish(dst, bias, relu, compiled):
    _jit.set_enabled(compiled)
    try:
        _epilogue.finish_output(dst, bias, relu)
    finally:
        _jit.set_enabled(None)
    return dst


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("relu", [False, True, 6.0, 1.0])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_finish_output_equals_numpy_bits(relu, with_bias, dtype, monkeypatch):
    rng = np.random.default_rng(3)
    x = _values(rng, (5, 7, 12), dtype)
    bias = rng.standard_normal(12).astype(dtype) if with_bias else None
    if with_bias:
        bias[0] = -0.0                       # -0.0 + -0.0 stays -0.0: the clip decides its sign
    calls = count_calls(monkeypatch, _jit_epilogue, "bias_clip")
    compiled = _finish(x.copy(), bias, relu, True)
    ran = calls.get("bias_clip", 0)
    numpy_result = _finish(x.copy(), bias, relu, False)
    assert calls.get("bias_clip", 0) == ran
    assert ran == (1 if (with_bias or relu) else 0)
    np.testing.assert_array_equal(_bits(compiled), _bits(numpy_result))
    # And what the arithmetic is meant to be, in float64.
    ref = x.astype(np.float64) + (0 if bias is None else bias)
    if relu:
        ref = np.maximum(ref, 0) if relu is True else np.clip(ref, 0, relu)
    np.testing.assert_allclose(compiled, ref.astype(dtype), rtol=0, atol=0)


def test_chunks_the_kernel_cannot_take_stay_on_numpy(monkeypatch):
    rng = np.random.default_rng(4)
    calls = count_calls(monkeypatch, _jit_epilogue, "bias_clip")
    base = _values(rng, (4, 6, 8), np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    strided = base.copy()[:, ::2]                       # not C-contiguous
    expected = _finish(strided.copy(), bias, True, False)
    _finish(strided, bias, True, True)
    tiled = rng.standard_normal((4, 8)).astype(np.float32)   # a (C, mult) depthwise bias
    dst = _values(rng, (3, 6, 4, 8), np.float32)
    expected_tiled = _finish(dst.copy(), tiled, True, False)
    _finish(dst, tiled, True, True)
    assert calls == {}
    np.testing.assert_array_equal(strided, expected)
    np.testing.assert_array_equal(dst, expected_tiled)


@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply")   # inf * 0, on purpose
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_mask_by_positive_equals_numpy_bits(dtype, monkeypatch):
    rng = np.random.default_rng(5)
    grad = _values(rng, (3, 5, 4, 6), dtype)
    ref = _values(rng, (3, 5, 4, 6), dtype)
    ref.reshape(-1)[6:12] = [np.nan, -0.0, 0.0, 1e-30, -1e-30, np.inf]
    calls = count_calls(monkeypatch, _jit_epilogue, "multiply_by_positive")
    compiled, reference = grad.copy(), grad.copy()
    _jit.set_enabled(True)
    try:
        _epilogue.mask_by_positive(compiled, ref)
        _jit.set_enabled(False)
        _epilogue.mask_by_positive(reference, ref)
    finally:
        _jit.set_enabled(None)
    assert calls == {"multiply_by_positive": 1}
    np.testing.assert_array_equal(_bits(compiled), _bits(reference))   # -0.0 and NaN included
    np.testing.assert_array_equal(compiled, grad * (ref > 0))
