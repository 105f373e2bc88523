"""Batch transforms: semantics, dtype, reproducibility, and parity with Pillow / PyTorch."""

import numpy as np
import pytest
from PIL import Image

import cnnkit
from cnnkit.data.transforms import (CenterCrop, Compose, GaussianNoise, Normalize, RandomCrop,
                                    RandomErasing, RandomHorizontalFlip, RandomVerticalFlip, Resize,
                                    resize_matrix)

RANDOM = [lambda g: RandomHorizontalFlip(0.5, generator=g), lambda g: RandomVerticalFlip(0.5, generator=g),
          lambda g: RandomCrop(6, padding=2, generator=g), lambda g: GaussianNoise(0.1, generator=g),
          lambda g: RandomErasing(1.0, generator=g)]
ALL = RANDOM + [lambda g: Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.4]), lambda g: CenterCrop(4),
                lambda g: Resize((5, 9)), lambda g: Compose([CenterCrop(5), Normalize(0.5, 0.5)])]


@pytest.fixture
def batch():
    return np.random.default_rng(0).random((8, 3, 7, 6)).astype(np.float32)


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept_input_untouched(make, dtype, batch):
    x = batch.astype(dtype)
    x.flags.writeable = False  # any in-place write would raise
    out = make(np.random.default_rng(1))(x)
    assert out.dtype == dtype and out.ndim == 4 and len(out) == 8


@pytest.mark.parametrize("make", RANDOM)
def test_random_transforms_reproducible(make, batch):
    a = make(np.random.default_rng(3))(batch)
    b = make(np.random.default_rng(3))(batch)
    np.testing.assert_array_equal(a, b)
    cnnkit.manual_seed(11)
    c = make(None)(batch)
    cnnkit.manual_seed(11)
    np.testing.assert_array_equal(make(None)(batch), c)


@pytest.mark.parametrize("make", ALL)
def test_rejects_non_batch(make):
    with pytest.raises(ValueError, match=r"expected a float batch of shape \(N, C, H, W\), got shape \(3, 7, 6\)"):
        make(None)(np.zeros((3, 7, 6), np.float32))


def test_compose_order():
    t = Compose([lambda x: x + 1, lambda x: x * 10])
    np.testing.assert_array_equal(t(np.zeros((1, 1, 1, 1))), [[[[10.0]]]])
    with pytest.raises(TypeError, match="not callable"):
        Compose([3])


def test_normalize_math_and_errors(batch):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]
    out = Normalize(mean, std)(batch)
    for c in range(3):
        np.testing.assert_allclose(out[:, c], (batch[:, c] - mean[c]) / std[c], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(Normalize(0.5, 0.25)(batch), (batch - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="mean has 2 values, the batch has 3 channels"):
        Normalize([0.1, 0.2], [1, 1])(batch)
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(0.0, 0.0)


def test_horizontal_flip_really_flips(batch):
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(batch), batch[:, :, :, ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(batch), batch)
    np.testing.assert_array_equal(RandomVerticalFlip(1.0)(batch), batch[:, :, ::-1, :])
    x = np.random.default_rng(0).random((400, 1, 2, 3)).astype(np.float32)
    out = RandomHorizontalFlip(0.5, generator=np.random.default_rng(0))(x)
    flipped = np.all(out == x[..., ::-1], axis=(1, 2, 3))
    kept = np.all(out == x, axis=(1, 2, 3))
    assert np.all(flipped ^ kept)  # each sample is either wholly flipped or untouched
    assert 150 < flipped.sum() < 250


def test_random_crop_with_padding_keeps_shape_and_takes_real_windows():
    x = np.random.default_rng(0).random((16, 2, 8, 8)).astype(np.float32) + 1  # no zeros in the image
    out = RandomCrop(8, padding=3, generator=np.random.default_rng(1))(x)
    assert out.shape == x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)))
    offsets = []
    for i in range(16):
        hits = [(dy, dx) for dy in range(7) for dx in range(7)
                if np.array_equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 4  # offsets are drawn per sample
    small = RandomCrop((3, 5), generator=np.random.default_rng(2))(x)
    assert small.shape == (16, 2, 3, 5)
    with pytest.raises(ValueError, match=r"crop size \(10, 10\) is larger than the padded image \(8, 8\)"):
        RandomCrop(10)(x)
    with pytest.raises(ValueError, match="padding must be"):
        RandomCrop(4, padding=-1)


def test_random_crop_asymmetric_padding_order():
    x = np.ones((1, 1, 2, 2), np.float32)
    # (left, top, right, bottom) = (1, 0, 0, 0): the only 2x3 window is the whole padded image.
    out = RandomCrop((2, 3), padding=(1, 0, 0, 0), fill=-1)(x)
    np.testing.assert_array_equal(out[0, 0], [[-1, 1, 1], [-1, 1, 1]])


def test_center_crop(batch):
    np.testing.assert_array_equal(CenterCrop(4)(batch), batch[:, :, 2:6, 1:5])
    np.testing.assert_array_equal(CenterCrop((3, 6))(batch), batch[:, :, 2:5, :])
    with pytest.raises(ValueError, match="larger than the image"):
        CenterCrop(8)(batch)


def test_gaussian_noise_statistics_and_clip():
    x = np.zeros((64, 1, 32, 32), np.float32)
    out = GaussianNoise(0.2, generator=np.random.default_rng(0))(x)
    assert abs(out.mean()) < 0.01 and abs(out.std() - 0.2) < 0.01
    clipped = GaussianNoise(0.5, clip=(0.0, 1.0), generator=np.random.default_rng(0))(x + 0.5)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    with pytest.raises(ValueError, match="std must be >= 0"):
        GaussianNoise(-1)


def test_random_erasing_draws_one_rectangle_per_sample():
    x = np.ones((32, 3, 20, 20), np.float32)
    out = RandomErasing(p=1.0, value=0.0, generator=np.random.default_rng(0))(x)
    erased = out[:, 0] == 0
    assert np.array_equal(erased[:, None].repeat(3, 1), out == 0)  # same region in every channel
    for m in erased:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert m.sum() == len(rows) * len(cols)  # a filled rectangle
        assert rows.size and np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        assert 0.02 * 400 * 0.6 <= m.sum() <= 0.33 * 400 * 1.4  # area within scale, up to rounding
    np.testing.assert_array_equal(RandomErasing(p=0.0)(x), x)
    per_channel = RandomErasing(p=1.0, value=(1.0, 2.0, 3.0), generator=np.random.default_rng(0))(x * 0)
    assert set(np.unique(per_channel[:, 2])) == {0.0, 3.0}


# --- Resize: separable filters checked against Pillow and PyTorch ----------------------------

@pytest.mark.parametrize("interp,pil", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC),
                                        ("nearest", Image.NEAREST)])
@pytest.mark.parametrize("out_hw", [(8, 11), (30, 40), (17, 9)])
def test_resize_matches_pillow_float_images(interp, pil, out_hw):
    x = np.random.default_rng(0).random((2, 3, 17, 23)).astype(np.float32)
    out = Resize(out_hw, interp)(x)
    ref = np.array([[np.asarray(Image.fromarray(x[n, c], mode="F").resize(out_hw[::-1], pil))
                     for c in range(3)] for n in range(2)])
    assert out.shape == (2, 3) + out_hw and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "nearest"])
def test_resize_matches_torch_interpolate(interp):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).random((2, 3, 19, 13)).astype(np.float32)
    for out_hw in [(7, 6), (40, 20)]:
        if interp == "nearest":
            ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=out_hw, mode="nearest-exact")
        else:
            ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=out_hw, mode=interp,
                                                  align_corners=False, antialias=True)
        np.testing.assert_allclose(Resize(out_hw, interp)(x), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_resize_shorter_side_and_rows_sum_to_one():
    x = np.zeros((1, 1, 30, 45), np.float32)
    assert Resize(20)(x).shape == (1, 1, 20, 30)
    assert Resize(20)(x.transpose(0, 1, 3, 2)).shape == (1, 1, 30, 20)
    assert Resize(256)(np.zeros((1, 3, 300, 401), np.float32)).shape == (1, 3, 256, 342)
    for interp in ("bilinear", "bicubic", "nearest"):
        np.testing.assert_allclose(resize_matrix(37, 11, interp).sum(1), 1.0)
    with pytest.raises(ValueError, match="interpolation must be"):
        Resize(4, "lanczos")
