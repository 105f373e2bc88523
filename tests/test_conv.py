"""Conv2d and ZeroPad2d: float64 gradient checks, PyTorch parity, errors, init, dtypes."""

import math

import numpy as np
import pytest
from float32_tolerance import assert_float32_close

import cnnkit
from cnnkit.nn import Conv2d, ZeroPad2d

# (name, constructor kwargs, input shape N, C, H, W)
CONFIGS = [
    ("basic_3x3", dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 7, 6)),
    ("pad1", dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (2, 2, 5, 5)),
    ("stride2_odd", dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1), (2, 2, 7, 9)),
    ("nonsquare", dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)), (1, 2, 7, 5)),
    ("dilation", dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2, padding=2), (2, 2, 7, 7)),
    ("dilation_stride", dict(in_channels=2, out_channels=2, kernel_size=(2, 3), dilation=(2, 1), stride=(1, 2)), (1, 2, 8, 7)),
    ("groups2", dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2), (2, 4, 5, 6)),
    ("depthwise", dict(in_channels=3, out_channels=3, kernel_size=3, padding=1, groups=3), (2, 3, 6, 5)),
    ("depthwise_mult2_s2", dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1, groups=2), (2, 2, 7, 7)),
    ("no_bias_1x1", dict(in_channels=3, out_channels=5, kernel_size=1, bias=False), (2, 3, 4, 3)),
    ("same_s1_even_k", dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"), (2, 2, 6, 5)),
    ("same_s2_tf", dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding="same"), (2, 2, 8, 7)),
    ("same_s2_depthwise", dict(in_channels=3, out_channels=3, kernel_size=5, stride=2, padding="same", groups=3), (1, 3, 9, 8)),
    ("valid", dict(in_channels=1, out_channels=2, kernel_size=5, padding="valid"), (2, 1, 8, 9)),
    ("batch1_big_pad", dict(in_channels=2, out_channels=2, kernel_size=3, padding=3), (1, 2, 4, 4)),
]
IDS = [c[0] for c in CONFIGS]


@pytest.fixture(params=["default", "default_numpy", "channels_last_im2col", "winograd", "winograd_numpy",
                        "row_blocks", "row_taps", "tap_weight_grad"])
def algorithm(request, monkeypatch):
    """Run a test with the default kernels (with the compiled copies and output pass where
    Numba is installed, the copies also for the few channels of the test layers, and with
    NumPy's, "default_numpy"), then with the channels-last im2col forced for
    few-channel inputs too (by default they take channels-first columns or row blocks),
    (and input gradients through col2im take the channel-interleaved columns, not tap-major),
    then with Winograd forced on every 3x3 stride-1 convolution (by default it needs many
    channels, too big for gradient checks), with its compiled tile transforms where Numba is
    installed (``_jit_winograd``) and with the NumPy ones ("winograd_numpy"), then with row blocks (``_small_channel_conv``)
    on every groups == 1 convolution whose Wo has a divisor > 1, then with row taps
    (``_row_tap_conv``) on every groups == 1 convolution of vertical stride 1, on MKL when
    it is installed (float32), else on NumPy's products (float64 and the fallback), then
    with the column-split weight gradient (``_tap_weight_grad``; by default only for kernels
    of 4 MB and more) on every groups == 1 convolution, its columns shared out to the
    threads even for these tiny layers and one image per chunk."""
    if request.param == "tap_weight_grad":
        from cnnkit.nn import _parallel, _tap_weight_grad
        monkeypatch.setattr(_tap_weight_grad, "MIN_GRAD_BYTES", 0)
        monkeypatch.setattr(_tap_weight_grad, "MIN_BLOCK_CHANNELS", 1)
        monkeypatch.setattr(_tap_weight_grad, "TAP_CHUNK_BYTES", 1)
        monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)
    if request.param == "row_taps":
        from cnnkit.nn import _conv_kernels, _gemm, _parallel
        from cnnkit.nn import _small_channel_conv
        monkeypatch.setattr(_conv_kernels, "SMALL_C", 0)
        monkeypatch.setattr(_small_channel_conv, "BLOCK_N", 0)
        monkeypatch.setattr(_conv_kernels, "ROW_TAPS_MIN_PIXELS", 1)
        monkeypatch.setattr(_conv_kernels, "COMPILED_COL2IM_MAX_C", 0)
        monkeypatch.setattr(_gemm, "mkl_active", lambda: True)
        monkeypatch.setattr(_gemm, "MIN_MACS", 0)
        monkeypatch.setattr(_parallel, "blas_single_threaded", lambda: True)
    if request.param == "channels_last_im2col":
        from cnnkit.nn import _conv_kernels, _small_channel_conv
        monkeypatch.setattr(_conv_kernels, "SMALL_C", 0)
        monkeypatch.setattr(_small_channel_conv, "MAX_BLOCK", 1)
        # ... and the channel-interleaved col2im for every input gradient that takes col2im.
        monkeypatch.setattr(_conv_kernels, "TAP_MAJOR_MAX_C", 0)
    if request.param == "row_blocks":
        from cnnkit.nn import _small_channel_conv
        monkeypatch.setattr(_small_channel_conv, "BLOCK_N", 1 << 30)
        monkeypatch.setattr(_small_channel_conv, "FEW_BLOCK_N", 1 << 30)
        monkeypatch.setattr(_small_channel_conv, "MIN_FEW_BLOCK", 2)
    if request.param == "default":
        from cnnkit.nn import _im2col
        monkeypatch.setattr(_im2col, "COMPILED_MIN_CHANNELS", 1)
    if request.param == "default_numpy":
        from cnnkit.nn import _jit
        _jit.set_enabled(False)
        yield request.param
        _jit.set_enabled(None)
        return
    if request.param.startswith("winograd"):
        from cnnkit.nn import _jit, _winograd
        monkeypatch.setattr(_winograd, "MIN_CHANNEL_PRODUCT", 1)
        monkeypatch.setattr(_winograd, "use_winograd_weight_grad", lambda *a: True)
        if request.param == "winograd_numpy":
            _jit.set_enabled(False)
            yield request.param
            _jit.set_enabled(None)
            return
    yield request.param


@pytest.mark.parametrize("name,kwargs,shape", CONFIGS, ids=IDS)
def test_gradcheck_float64(name, kwargs, shape, algorithm):
    # Input, weight and bias against central differences, random read-only upstream grad.
    rng = np.random.default_rng(1)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    assert cnnkit.gradcheck(layer, rng.standard_normal(shape), rtol=1e-6, atol=1e-8)
    assert layer.weight.dtype == np.float32  # restored after the check


def test_float64_layer_gives_float64():
    layer = Conv2d(2, 3, 3, padding=1).double()
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    out = layer(x)
    assert out.dtype == np.float64
    assert layer.backward(np.ones_like(out)).dtype == np.float64 and layer.weight.grad.dtype == np.float64


def _torch_conv(torch, kwargs, shape, layer):
    """The PyTorch twin of ``layer`` (TF-style 'same' with stride > 1 becomes F.pad + conv)."""
    kw = dict(kwargs)
    pad = None
    if kw.get("padding") == "same" and kw.get("stride", 1) != 1:
        from cnnkit.nn._kernels import resolve_conv_padding
        t, b, l, r = resolve_conv_padding("same", shape[2:], layer.kernel_size, layer.stride, layer.dilation)
        pad = (l, r, t, b)
        kw["padding"] = 0
    conv = torch.nn.Conv2d(**kw).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(layer.weight.data.astype(np.float64)))
        if layer.bias is not None:
            conv.bias.copy_(torch.from_numpy(layer.bias.data.astype(np.float64)))
    conv = conv.float()

    def run(xt):
        if pad is not None:
            xt = torch.nn.functional.pad(xt, pad)
        return conv(xt)

    return conv, run


@pytest.mark.parametrize("name,kwargs,shape", CONFIGS, ids=IDS)
def test_parity_with_torch_float32(name, kwargs, shape, algorithm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    x = rng.standard_normal(shape).astype(np.float32)
    out = layer(x)
    conv, run = _torch_conv(torch, kwargs, shape, layer)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    ot = run(xt)
    assert out.dtype == np.float32 and out.shape == tuple(ot.shape)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-4, atol=1e-5)
    g = rng.standard_normal(out.shape).astype(np.float32)
    g.setflags(write=False)
    gx = layer.backward(g)
    ot.backward(torch.from_numpy(g.copy()))
    assert gx.dtype == np.float32 and layer.weight.grad.dtype == np.float32
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad, conv.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    if layer.bias is not None:
        np.testing.assert_allclose(layer.bias.grad, conv.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_winograd_big_layer_parity_with_torch_float32():
    # Channels enough for the default dispatch to pick Winograd (forward, input and weight grads).
    torch = pytest.importorskip("torch")
    from cnnkit.nn import _winograd
    assert _winograd.use_winograd((3, 3), (1, 1), (1, 1), 1, 64, 128)
    assert _winograd.use_winograd_weight_grad(8, (7, 7), 64, 128) is False
    assert _winograd.use_winograd_weight_grad(64, (8, 8), 64, 128)
    rng = np.random.default_rng(10)
    layer = Conv2d(64, 128, 3, padding=1)
    x = rng.standard_normal((64, 64, 7, 8)).astype(np.float32)
    conv, run = _torch_conv(torch, dict(in_channels=64, out_channels=128, kernel_size=3, padding=1), x.shape, layer)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    ot = run(xt)
    out = layer(x)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-4, atol=1e-4)
    g = rng.standard_normal(out.shape).astype(np.float32)
    ot.backward(torch.from_numpy(g))
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    # Sums over 3584 positions: small entries are differences of large terms, so the
    # absolute tolerance is scaled to the gradient's magnitude (float32: ~1e-7 * terms).
    for ours, ref in ((layer.weight.grad, conv.weight.grad.numpy()), (layer.bias.grad, conv.bias.grad.numpy())):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_kernel_weight_grad_by_columns_float32(threads):
    # A 256 -> 512 3x3 kernel (4.7 MB) takes the column-split weight gradient by default
    # (``_tap_weight_grad``); against a float64 sum over the padded input's windows.
    from cnnkit.nn import _conv_kernels, _parallel, _tap_weight_grad
    assert _tap_weight_grad.use_tap_weight_grad(1, (512, 256, 3, 3))
    assert not _tap_weight_grad.use_tap_weight_grad(1, (256, 128, 3, 3))
    assert not _tap_weight_grad.use_tap_weight_grad(2, (512, 256, 3, 3))
    rng = np.random.default_rng(12)
    n, h, w, c, o = 5, 4, 3, 256, 512
    xt = rng.standard_normal((n, h, w, c)).astype(np.float32)
    g = rng.standard_normal((n, h, w, o)).astype(np.float32)
    geo = dict(kernel=(3, 3), stride=(1, 1), dilation=(1, 1), pads=(1, 1, 1, 1), out_hw=(h, w))
    _parallel.set_num_threads(threads)          # tests/conftest.py restores the default afterwards
    gw, gb = _conv_kernels.gemm_conv_param_grads(g, xt, (o, c, 3, 3), 1, geo)
    xp = np.pad(xt.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.empty((o, c, 3, 3))
    for i in range(3):
        for j in range(3):
            ref[:, :, i, j] = np.einsum("nhwo,nhwc->oc", g.astype(np.float64), xp[:, i:i + h, j:j + w])
    assert gw.dtype == np.float32 and gw.shape == (o, c, 3, 3) and gw.flags.c_contiguous
    assert_float32_close(gw, ref, n_terms=n * h * w)
    assert_float32_close(gb, g.astype(np.float64).sum(axis=(0, 1, 2)), n_terms=n * h * w)


@pytest.mark.parametrize("pads, hw", [((1, 1, 1, 1), (6, 7)), ((2, 0, 1, 2), (5, 5))])
def test_winograd_flipped_uses_the_forward_transform(pads, hw):
    # The input gradient reuses the forward's transformed weight with permuted tile
    # transforms; it must equal the transform of the explicitly flipped, transposed kernel.
    from cnnkit.nn import _winograd
    rng = np.random.default_rng(11)
    o, c = 5, 3
    w = rng.standard_normal((o, c, 3, 3))
    g = rng.standard_normal((2, 6, 7, o))
    flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    expected = _winograd.winograd_conv(g, _winograd.transform_weight(flipped), pads, hw)
    got = _winograd.winograd_conv(g, _winograd.transform_weight(w), pads, hw, flipped=True)
    assert got.shape == (2, *hw, c)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_same_padding_matches_torch_same_stride1():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for k, d in [(3, 1), (4, 1), (5, 2), (2, 3)]:
        layer = Conv2d(2, 3, k, padding="same", dilation=d)
        x = rng.standard_normal((1, 2, 7, 6)).astype(np.float32)
        conv = torch.nn.Conv2d(2, 3, k, padding="same", dilation=d)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(layer.weight.data))
            conv.bias.copy_(torch.from_numpy(layer.bias.data))
        np.testing.assert_allclose(layer(x), conv(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_tf_same_stride2_output_size_and_padding():
    # TF rule: output ceil(H / s); odd padding pixel at the bottom / right.
    from cnnkit.nn._kernels import same_padding
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(5, 1, 2) == (0, 0)
    layer = Conv2d(1, 1, 3, stride=2, padding="same")
    for h in (7, 8, 9, 10):
        assert layer(np.zeros((1, 1, h, h + 1), np.float32)).shape == (1, 1, math.ceil(h / 2), math.ceil((h + 1) / 2))


def test_default_init_matches_pytorch_bounds_and_uses_global_seed():
    cnnkit.manual_seed(123)
    a = Conv2d(16, 32, 3)
    cnnkit.manual_seed(123)
    b = Conv2d(16, 32, 3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / math.sqrt(16 * 9)
    for p in (a.weight.data, a.bias.data):
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
    # Uniform on [-bound, bound]: std = bound / sqrt(3).
    assert abs(a.weight.data.std() - bound / math.sqrt(3)) < 0.05 * bound
    dw = Conv2d(8, 8, 3, groups=8)
    assert dw.weight.shape == (8, 1, 3, 3)
    assert np.abs(dw.weight.data).max() <= 1 / 3


def test_state_dict_keys_match_pytorch():
    torch = pytest.importorskip("torch")
    layer = Conv2d(3, 4, (3, 5), groups=1, bias=True)
    assert list(layer.state_dict()) == list(torch.nn.Conv2d(3, 4, (3, 5)).state_dict())
    assert list(Conv2d(3, 4, 3, bias=False).state_dict()) == ["weight"]


def test_error_messages():
    layer = Conv2d(3, 16, 3)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 16, kernel_size=\(3, 3\).*expected input of shape "
                                         r"\(N, 3, H, W\), got \(8, 1, 28, 28\)"):
        layer(np.zeros((8, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"expected a 4-D input"):
        layer(np.zeros((3, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"too small for kernel_size"):
        Conv2d(3, 4, 5)(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward"):
        Conv2d(3, 4, 3).backward(np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"divisible by groups"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"padding must be"):
        Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        Conv2d(3, 4, 3, stride=0)
    with pytest.raises(RuntimeError, match=r"gradient of shape \(1, 16, 2, 2\) for a tensor of shape \(1, 16, 3, 3\)"):
        layer(np.zeros((1, 3, 5, 5), np.float32))
        layer.backward(np.zeros((1, 16, 2, 2), np.float32))


def test_needs_input_grad_false_skips_input_gradient():
    rng = np.random.default_rng(4)
    layer = Conv2d(2, 3, 3)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    g = rng.standard_normal(layer(x).shape).astype(np.float32)
    full = Conv2d(2, 3, 3)
    full.load_state_dict(layer.state_dict())
    full(x)
    full.backward(g)
    layer.needs_input_grad = False
    assert layer.backward(g) is None
    np.testing.assert_allclose(layer.weight.grad, full.weight.grad)


def test_frozen_parameters_get_no_grad_and_grads_accumulate():
    rng = np.random.default_rng(5)
    layer = Conv2d(2, 3, 3)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    g = rng.standard_normal(layer(x).shape).astype(np.float32)
    layer.backward(g)
    first = layer.weight.grad.numpy().copy()
    layer(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-6)
    layer.zero_grad()
    layer.requires_grad_(False)
    layer(x)
    gx = layer.backward(g)
    assert layer.weight.grad is None and layer.bias.grad is None
    assert gx.shape == x.shape


def test_float64_input_to_float32_layer_stays_float32_and_eval_mode_backward():
    layer = Conv2d(1, 2, 3).eval()
    out = layer(np.random.default_rng(6).standard_normal((1, 1, 5, 5)))
    assert out.dtype == np.float32
    assert layer.backward(np.ones(out.shape, np.float32)).shape == (1, 1, 5, 5)


def test_outputs_are_not_overwritten_by_later_calls():
    layer = Conv2d(2, 3, 3, padding=1)
    rng = np.random.default_rng(7)
    x1, x2 = (rng.standard_normal((2, 2, 5, 5)).astype(np.float32) for _ in range(2))
    y1 = layer(x1)
    keep = y1.copy()
    layer(x2)
    np.testing.assert_array_equal(y1, keep)


# ---------------------------------------------------------------------------------- ZeroPad2d
@pytest.mark.parametrize("padding", [1, (1, 2, 0, 3), (2, 0, 1, 1), (-1, 2, 1, -2)])
def test_zeropad2d_parity_and_grad(padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    layer = ZeroPad2d(padding)
    out = layer(x)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    ot = torch.nn.ZeroPad2d(padding)(xt)
    np.testing.assert_array_equal(out, ot.detach().numpy())
    g = rng.standard_normal(out.shape).astype(np.float32)
    g.setflags(write=False)
    ot.backward(torch.from_numpy(g.copy()))
    np.testing.assert_array_equal(layer.backward(g), xt.grad.numpy())


def test_zeropad2d_gradcheck_float64():
    x = np.random.default_rng(9).standard_normal((1, 2, 3, 3))
    assert cnnkit.gradcheck(ZeroPad2d((1, 0, 2, 1)), x, rtol=1e-6, atol=1e-8)


def test_zeropad2d_errors():
    with pytest.raises(TypeError, match="ZeroPad2d"):
        ZeroPad2d((1, 2))
    with pytest.raises(ValueError, match="4-D"):
        ZeroPad2d(1)(np.zeros((2, 3), np.float32))


# First layers of the reference nets (and neighbours) that take the small-channel kernels:
# (C, O, k, padding, H, input layout). NCHW = a batch from the data, NHWC = an activation.
SMALL_C_LAYERS = [
    (1, 10, 5, 0, 28, "nchw"),    # LeNet conv1: row blocks, P = 8
    (10, 20, 5, 0, 12, "nhwc"),   # LeNet conv2: row blocks, P = 2
    (1, 20, 3, 0, 28, "nchw"),    # seed-000 conv1: channels-first columns
    (1, 32, 3, 1, 28, "nchw"),    # conv4 conv1: channels-first columns, padded
    (3, 64, 3, 1, 32, "nchw"),    # VGG conv1
    (3, 10, 5, 2, 16, "nchw"),    # row blocks, channels-first order, padded
    (3, 8, 3, 1, 16, "nhwc"),     # row blocks, channels-last order, padded
]


@pytest.mark.parametrize("c,o,k,pad,h,layout", SMALL_C_LAYERS)
@pytest.mark.parametrize("threads", [1, 2])
def test_small_channel_layers_parity_with_torch_float32(c, o, k, pad, h, layout, threads, monkeypatch):
    torch = pytest.importorskip("torch")
    from cnnkit.nn import _parallel, _kernels as F
    if threads > 1:
        if _parallel._blas is None:
            pytest.skip("NumPy's OpenBLAS not found: the kernels run serially")
        monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)
    rng = np.random.default_rng(7)
    shape = (5, c, h, h) if layout == "nchw" else (5, h, h, c)
    x = rng.standard_normal(shape).astype(np.float32)
    x = x if layout == "nchw" else x.transpose(0, 3, 1, 2)
    w = (rng.standard_normal((o, c, k, k)) / k).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    F.set_num_threads(threads)          # tests/conftest.py restores the default afterwards
    out, cache = F.conv2d_forward(x, w, b, 1, pad)
    g = rng.standard_normal(out.shape).astype(np.float32)
    _, gw, gb = F.conv2d_backward(g, cache, w, need_input_grad=False)
    _, gw2, gb2 = F.conv2d_backward(g, cache, w, need_input_grad=False, need_bias_grad=False)
    xt, wt, bt = (torch.from_numpy(np.ascontiguousarray(a)).requires_grad_() for a in (x, w, b))
    ot = torch.nn.functional.conv2d(xt, wt, bt, 1, pad)
    ot.backward(torch.from_numpy(g))
    assert out.dtype == gw.dtype == gb.dtype == np.float32 and gb2 is None
    # Sums in float32, in another order than torch's (and than each other's for gw2): the
    # output sums C*k*k products, the weight and bias gradients one per output pixel.
    pixels = out.shape[0] * out.shape[2] * out.shape[3]
    assert_float32_close(out, ot.detach().numpy(), c * k * k + 1)
    assert_float32_close(gw, wt.grad.numpy(), pixels)
    assert_float32_close(gw2, gw, pixels)
    assert_float32_close(gb, bt.grad.numpy(), pixels)


def test_small_channel_routing():
    from cnnkit.nn._conv_kernels import SMALL_C
    from cnnkit.nn._small_channel_conv import small_c_block
    assert small_c_block(1, 10, 24, SMALL_C) == 8       # LeNet conv1
    assert small_c_block(10, 20, 8, SMALL_C) == 2       # LeNet conv2
    assert small_c_block(1, 20, 26, SMALL_C) == 1       # channels-first columns
    assert small_c_block(3, 64, 32, SMALL_C) == 1
    assert small_c_block(20, 50, 9, SMALL_C) is None    # channels-last im2col
    assert small_c_block(32, 32, 28, SMALL_C) is None


@pytest.mark.parametrize("m", [1000, 37, 2 * 48])
def test_narrow_matmul_equals_matmul(m):
    # The stacked small-GEMM path (with a remainder block) and its fallbacks.
    from cnnkit.nn._conv_kernels import narrow_matmul
    rng = np.random.default_rng(12)
    a = rng.standard_normal((m, 576)).astype(np.float32)
    for b in (rng.standard_normal((576, 32)).astype(np.float32),
              np.asfortranarray(rng.standard_normal((576, 20)).astype(np.float32)),   # transposed view
              rng.standard_normal((576, 64)).astype(np.float32)):                     # too wide: one call
        out = np.empty((m, b.shape[1]), np.float32)
        assert narrow_matmul(a, b, out) is out
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


def test_conv_through_stacked_small_gemms_matches_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    from cnnkit.nn import _conv_kernels
    monkeypatch.setattr(_conv_kernels, "NARROW_MIN_K", 1)
    monkeypatch.setattr(_conv_kernels, "SMALL_GEMM_MACS", 16 * 27 * 8)
    rng = np.random.default_rng(13)
    layer = Conv2d(3, 8, 3, padding=1)
    x = rng.standard_normal((3, 3, 9, 7)).astype(np.float32)
    conv, run = _torch_conv(torch, dict(in_channels=3, out_channels=8, kernel_size=3, padding=1), x.shape, layer)
    with monkeypatch.context() as m:
        m.setattr(_conv_kernels, "SMALL_C", 0)     # the general im2col + GEMM path
        out = layer(x)
    np.testing.assert_allclose(out, run(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,shape", CONFIGS, ids=IDS)
def test_fused_relu_equals_relu_of_the_output(name, kwargs, shape, algorithm):
    # Every kernel path (GEMM, small-channel, row blocks, Winograd, depthwise, pointwise)
    # applies the fused ReLU to exactly its own output.
    from cnnkit.nn import _kernels as F
    rng = np.random.default_rng(14)
    layer = Conv2d(**kwargs)
    x = rng.standard_normal(shape).astype(np.float32)
    args = (layer.weight.data, None if layer.bias is None else layer.bias.data, layer.stride,
            layer.padding, layer.dilation, layer.groups)
    plain, _ = F.conv2d_forward(x, *args)
    fused, _ = F.conv2d_forward(x, *args, relu=True)
    assert (plain < 0).any()
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))


@pytest.mark.parametrize("batch", [1, 5])
def test_depthwise_forward_same_on_the_threads_as_serially(batch, monkeypatch):
    """The depthwise forward runs on the calling thread by default (GIL-bound on two);
    its row split over the threads must give the same result, bit for bit."""
    from cnnkit.nn import _conv_kernels, _kernels as F
    cnnkit.manual_seed(0)
    conv = Conv2d(48, 48, 5, stride=1, padding=2, groups=48)
    x = np.random.default_rng(0).standard_normal((batch, 48, 40, 40)).astype(np.float32)
    threads = F.get_num_threads()
    F.set_num_threads(2)
    try:
        serial = conv(x)
        monkeypatch.setattr(_conv_kernels, "DEPTHWISE_FORWARD_PARALLEL", True)
        monkeypatch.setattr(_conv_kernels, "DEPTHWISE_CHUNK_BYTES", 16 << 10)   # several blocks per thread
        split = conv(x)
    finally:
        F.set_num_threads(threads)
    np.testing.assert_array_equal(serial, split)


def test_conv2d_forward_relu_flag_and_cap():
    """``relu`` is a flag (NumPy bools too, never read as a cap of 1) or a cap (6.0: ReLU6)."""
    from cnnkit.nn import _kernels as F
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32) * 4
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    plain = F.conv2d(x, w, None, padding=1)
    assert plain.max() > 6 and plain.min() < 0
    for flag in (True, np.True_):
        out, _ = F.conv2d_forward(x, w, None, 1, 1, 1, 1, keep_cache=False, relu=flag)
        np.testing.assert_array_equal(out, np.maximum(plain, 0))
    out, _ = F.conv2d_forward(x, w, None, 1, 1, 1, 1, keep_cache=False, relu=6.0)
    np.testing.assert_array_equal(out, np.clip(plain, 0, 6))


ROW_TAP_LAYERS = [
    # (constructor kwargs, input shape): 3x3 pad 1; a wide dilated kernel with horizontal
    # stride 2; asymmetric 'same' padding (even kernel); cropping-free 'valid' 5x5.
    (dict(in_channels=6, out_channels=7, kernel_size=3, padding=1), (5, 6, 9, 11)),
    (dict(in_channels=4, out_channels=5, kernel_size=(3, 5), dilation=(2, 1), stride=(1, 2), padding=(2, 2)),
     (3, 4, 10, 13)),
    (dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"), (2, 3, 8, 7)),
    (dict(in_channels=5, out_channels=3, kernel_size=5), (4, 5, 12, 9)),
]


def _spy_on_mkl_kernel(monkeypatch, name: str, chunk_bytes):
    """Route products to MKL as inside the thread pool (NumPy's when MKL is absent), set
    the chunk size, and count the calls of ``_conv_kernels.<name>``: the list returned."""
    from cnnkit.nn import _conv_kernels, _gemm, _parallel
    monkeypatch.setattr(_gemm, "mkl_active", lambda: True)
    monkeypatch.setattr(_gemm, "MIN_MACS", 0)
    monkeypatch.setattr(_parallel, "blas_single_threaded", lambda: True)
    if chunk_bytes:
        monkeypatch.setattr(_conv_kernels, "CHUNK_BYTES", chunk_bytes)
    calls = []
    real = getattr(_conv_kernels, name)
    monkeypatch.setattr(_conv_kernels, name, lambda *a: (calls.append(1), real(*a))[1])
    return calls


@pytest.mark.parametrize("kwargs,shape", ROW_TAP_LAYERS)
@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_row_taps_match_float64_and_are_taken(kwargs, shape, chunk_bytes, monkeypatch):
    """``_row_tap_conv`` (kh accumulated row products instead of im2col) gives the float64
    result of the layer, forward and input gradient (the input gradient of a stride-1
    layer is itself a convolution), in one chunk and in one-image chunks; and really runs."""
    from cnnkit.nn import _conv_kernels, _small_channel_conv
    monkeypatch.setattr(_conv_kernels, "SMALL_C", 0)
    monkeypatch.setattr(_small_channel_conv, "BLOCK_N", 0)    # no row blocks for few outputs
    monkeypatch.setattr(_conv_kernels, "ROW_TAPS_MIN_PIXELS", 1)
    calls = _spy_on_mkl_kernel(monkeypatch, "_row_tap_conv", chunk_bytes)
    rng = np.random.default_rng(21)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    ref = Conv2d(**kwargs).double()
    ref.load_state_dict(layer.state_dict())
    x = rng.standard_normal(shape).astype(np.float32)
    out = layer(x)
    expected = ref(x.astype(np.float64))
    assert out.dtype == np.float32 and calls
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(out.shape).astype(np.float32)
    calls.clear()
    gx = layer.backward(g)
    gx_ref = ref.backward(g.astype(np.float64))
    if layer.stride[1] == 1:
        assert calls                      # the input gradient went through the row taps too
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)


def test_row_taps_with_fused_relu_and_relu_mask(monkeypatch):
    """Inside a Conv2d -> ReLU -> Conv2d stack the row taps apply the fused ReLU (forward)
    and the ReLU's mask (the second conv's input gradient) like the im2col path."""
    from cnnkit.nn import ReLU, Sequential, _conv_kernels, _gemm
    monkeypatch.setattr(_conv_kernels, "ROW_TAPS_MIN_PIXELS", 1)
    monkeypatch.setattr(_gemm, "mkl_active", lambda: True)    # MKL's in-place sums, or NumPy's
    calls = []
    real = _conv_kernels._row_tap_conv
    monkeypatch.setattr(_conv_kernels, "_row_tap_conv", lambda *a: (calls.append(a[-1] is not None), real(*a))[1])
    rng = np.random.default_rng(22)
    cnnkit.manual_seed(0)
    net = Sequential(Conv2d(8, 8, 3, padding=1), ReLU(), Conv2d(8, 6, 3, padding=1))
    x = rng.standard_normal((4, 8, 10, 10)).astype(np.float32)
    results = {}
    for row_taps in (False, True):
        monkeypatch.setattr(_conv_kernels, "ROW_TAPS", row_taps)
        net.zero_grad()
        out = net(x)
        gx = net.backward(np.ones_like(out))
        results[row_taps] = [out, gx] + [p.grad.numpy().copy() for p in net.parameters()]
    assert True in calls and False in calls      # an input gradient with the mask, forwards
    for with_rows, plain in zip(results[True], results[False]):
        np.testing.assert_allclose(with_rows, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())


@pytest.mark.parametrize("kwargs,shape", ROW_TAP_LAYERS)
@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_row_tap_input_grad_matches_float64_and_is_taken(kwargs, shape, chunk_bytes, monkeypatch):
    """The input gradient through row columns (``_row_tap_input_grad``, the adjoint of
    the row taps, used where col2im would be) gives the float64 gradient, in one chunk
    and in one-image chunks, with and without a following ReLU mask; and really runs."""
    from cnnkit.nn import _conv_kernels
    from cnnkit.nn import _kernels as F
    monkeypatch.setattr(_conv_kernels, "GX_TRANSPOSED_FACTOR", 0)     # col2im's branch
    monkeypatch.setattr(_conv_kernels, "COMPILED_COL2IM_MAX_C", 0)    # ... by row columns
    calls = _spy_on_mkl_kernel(monkeypatch, "_row_tap_input_grad", chunk_bytes)
    rng = np.random.default_rng(23)
    cnnkit.manual_seed(0)
    layer = Conv2d(**kwargs)
    x = rng.standard_normal(shape).astype(np.float32)
    out, cache = F.conv2d_forward(x, layer.weight.data, layer.bias.data, layer.stride, layer.padding,
                                  layer.dilation, 1)
    g = rng.standard_normal(out.shape).astype(np.float32)
    gx, _, _ = F.conv2d_backward(g, cache, layer.weight.data)
    assert calls
    x64 = x.astype(np.float64)
    out64, cache64 = F.conv2d_forward(x64, layer.weight.data.astype(np.float64), None, layer.stride,
                                      layer.padding, layer.dilation, 1)
    with monkeypatch.context() as m:
        m.setattr(_conv_kernels, "ROW_TAPS", False)
        gx64, _, _ = F.conv2d_backward(g.astype(np.float64), cache64, layer.weight.data.astype(np.float64))
    np.testing.assert_allclose(gx, gx64, rtol=1e-5, atol=1e-5)
    # With the ReLU before the layer folded in: the gradient masked where the input is <= 0.
    relu_x = np.maximum(x, 0)
    _, cache = F.conv2d_forward(relu_x, layer.weight.data, None, layer.stride, layer.padding, layer.dilation, 1,
                                relu_input=True)
    gx_masked, _, _ = F.conv2d_backward(g, cache, layer.weight.data)
    np.testing.assert_allclose(gx_masked, np.where(relu_x > 0, gx64, 0), rtol=1e-5, atol=1e-5)
