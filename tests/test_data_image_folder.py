"""ImageFolder on PNG / JPEG files generated in tmp_path."""

import numpy as np
import pytest
from PIL import Image

from cnnkit.data import DataFormatError, DataLoader, ImageFolder


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
    """Two classes; PNGs are lossless so pixels can be compared exactly."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    pixels = {}
    for cls, names in (("dog", ["b.png", "a.png"]), ("cat", ["z.png"])):
        for name in names:
            arr = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            write_png(root / cls / name, arr)
            pixels[(cls, name)] = arr
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"")
    return root, pixels


def test_classes_sorted_samples_and_pixels(folder):
    root, pixels = folder
    ds = ImageFolder(root)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert [p.name for p, _ in ds.samples] == ["z.png", "a.png", "b.png"]
    np.testing.assert_array_equal(ds.targets, [0, 1, 1])
    assert ds.targets.dtype == np.int64 and ds.name == "pets"
    assert ds.data.dtype == np.uint8 and ds.data.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(ds.data[1], pixels[("dog", "a.png")])
    x, y = ds[0]
    assert x.dtype == np.float32 and x.shape == (3, 6, 5) and y == 0
    np.testing.assert_array_equal(x, pixels[("cat", "z.png")].transpose(2, 0, 1) / np.float32(255))


def test_grayscale_and_palette_images_convert(folder, tmp_path):
    root, pixels = folder
    Image.fromarray(pixels[("cat", "z.png")]).convert("P").save(root / "cat" / "p.png")
    ds = ImageFolder(root, grayscale=True)
    assert ds.data.shape == (4, 6, 5)
    x, _ = ds[0]
    assert x.shape == (1, 6, 5)
    # cat/p.png (sorted first) is the palette version of cat/z.png.
    with Image.open(root / "cat" / "p.png") as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(ds.data[0], expected)
    np.testing.assert_array_equal(ds.data[1], np.asarray(Image.fromarray(pixels[("cat", "z.png")]).convert("L")))


def test_jpeg_and_resize(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    big = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "a" / "x.jpg", quality=95)
    Image.fromarray(big[:20]).convert("L").save(root / "b" / "y.jpeg")
    ds = ImageFolder(root, image_size=(16, 12))
    assert ds.data.shape == (2, 16, 12, 3)
    with Image.open(root / "a" / "x.jpg") as im:
        expected = np.asarray(im.convert("RGB").resize((12, 16), Image.BILINEAR))
    np.testing.assert_array_equal(ds.data[0], expected)
    assert ImageFolder(root, image_size=8).data.shape == (2, 8, 8, 3)


def test_different_sizes_need_image_size(tmp_path):
    write_png(tmp_path / "r" / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "r" / "a" / "2.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(DataFormatError, match=r"different sizes: 4x4 .*1.png.*, 5x4 .*2.png.*image_size"):
        ImageFolder(tmp_path / "r")


def test_corrupt_image_names_the_file(folder):
    root, _ = folder
    bad = root / "cat" / "broken.png"
    good = (root / "cat" / "z.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a truncated PNG
    with pytest.raises(DataFormatError, match=r"broken.png: cannot decode image"):
        ImageFolder(root)
    bad.write_bytes(b"definitely not an image")
    with pytest.raises(DataFormatError, match=r"broken.png: cannot decode image \(UnidentifiedImageError"):
        ImageFolder(root)


def test_lazy_mode_matches_eager(folder):
    root, _ = folder
    eager, lazy = ImageFolder(root), ImageFolder(root, lazy=True)
    with pytest.raises(AttributeError, match="lazy=True"):
        lazy.data
    xe, ye = eager.get_batch([2, 0])
    xl, yl = lazy.get_batch([2, 0])
    np.testing.assert_array_equal(xe, xl)
    np.testing.assert_array_equal(ye, yl)
    batches = list(DataLoader(lazy, batch_size=2))
    assert [b[0].shape for b in batches] == [(2, 3, 6, 5), (1, 3, 6, 5)]


def test_bad_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="has no image files"):
        ImageFolder(tmp_path / "empty")
    write_png(tmp_path / "ok" / "c" / "1.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="image_size must be"):
        ImageFolder(tmp_path / "ok", image_size=(0, 3))
