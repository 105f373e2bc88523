"""nn._jit_winograd: the compiled Winograd tile transforms against the float64 convolution
and the NumPy transforms, forward and flipped (input gradient), and that they run."""

import numpy as np
import pytest

from cnnkit.nn import _jit, _jit_winograd
from cnnkit.nn import _winograd as W

from spy_helpers import count_calls

pytest.importorskip("numba")

CASES = [  # (N, H, W, C, O, pads (t, b, l, r))
    (3, 14, 14, 8, 16, (1, 1, 1, 1)),
    (2, 7, 9, 5, 6, (1, 1, 1, 1)),        # odd sizes: partial last tiles
    (2, 6, 5, 4, 3, (0, 0, 0, 0)),        # valid
    (2, 8, 8, 3, 4, (2, 2, 2, 2)),        # the input gradient's padding of a pad-0 layer
    (1, 9, 7, 2, 5, (-1, 1, 2, -1)),      # cropping (negative) and uneven pads
]


def _direct(x, weight, pads, flipped=False):
    """float64 3x3 correlation (NHWC), or with the flipped, in/out-swapped kernel."""
    t, b, l, r = pads
    x = np.pad(x, ((0, 0), (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0)), (0, 0)))
    x = x[:, max(-t, 0): x.shape[1] - max(-b, 0), max(-l, 0): x.shape[2] - max(-r, 0)]
    k = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3) if flipped else weight      # (O', C', 3, 3)
    ho, wo = x.shape[1] - 2, x.shape[2] - 2
    out = np.zeros((x.shape[0], ho, wo, k.shape[0]))
    for i in range(3):
        for j in range(3):
            out += x[:, i:i + ho, j:j + wo] @ k[:, :, i, j].T
    return out


@pytest.fixture
def spy(monkeypatch):
    yield count_calls(monkeypatch, _jit_winograd, "input_tiles", "output_tiles")
    _jit.set_enabled(None)


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_compiled_transforms_match_float64_and_numpy(case, flipped, spy):
    n, h, w, c, o, pads = case
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((o, c, 3, 3))
    cin = o if flipped else c
    x = rng.standard_normal((n, h, w, cin))
    bias = None if flipped else rng.standard_normal(o)
    ho, wo = h + pads[0] + pads[1] - 2, w + pads[2] + pads[3] - 2
    ref = _direct(x, weight, pads, flipped) + (0 if bias is None else bias)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        wt = W.transform_weight(weight.astype(dtype))
        args = (x.astype(dtype), wt, pads, (ho, wo), None if bias is None else bias.astype(dtype), flipped)
        _jit.set_enabled(True)
        compiled = W.winograd_conv(*args).copy()
        assert spy["input_tiles"] == spy["output_tiles"] >= 1
        calls = dict(spy)
        _jit.set_enabled(False)
        numpy_path = W.winograd_conv(*args).copy()
        assert spy == calls                                          # the NumPy transforms ran
        scale = np.abs(ref).max()
        np.testing.assert_allclose(compiled, ref, rtol=0, atol=tol * scale)
        np.testing.assert_allclose(compiled, numpy_path, rtol=0, atol=tol * scale)


def test_fused_relu_relu6_and_relu_mask(spy):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    mask_src = rng.standard_normal((2, 8, 8, 6)).astype(np.float32)
    wt = W.transform_weight(weight)
    _jit.set_enabled(True)
    plain = W.winograd_conv(x, wt, (1, 1, 1, 1), (8, 8), bias).copy()
    relu = W.winograd_conv(x, wt, (1, 1, 1, 1), (8, 8), bias, relu=True).copy()
    masked = W.winograd_conv(x, wt, (1, 1, 1, 1), (8, 8), bias, relu_mask=mask_src).copy()
    relu6 = W.winograd_conv(x, wt, (1, 1, 1, 1), (8, 8), bias, relu=6.0).copy()
    relu1 = W.winograd_conv(x, wt, (1, 1, 1, 1), (8, 8), bias, relu=1.0).copy()   # a cap, not True
    np.testing.assert_array_equal(relu, np.maximum(plain, 0))
    np.testing.assert_array_equal(relu6, np.clip(plain, 0, 6))
    np.testing.assert_array_equal(relu1, np.clip(plain, 0, 1))
    assert plain.max() > 6 and relu6.max() == 6
    np.testing.assert_array_equal(masked, plain * (mask_src > 0))
    assert spy
