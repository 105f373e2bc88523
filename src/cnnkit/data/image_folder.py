"""``ImageFolder``: one sub-folder per class, images decoded with Pillow.

By default every image is decoded once, up front, into one uint8 array, so that batches are
a fancy-indexing step like the built-in datasets (about 150 kB per 224x224 RGB image: fine for
a few thousand images). ``lazy=True`` keeps only the file list and decodes each batch on demand,
for folders too big to hold in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import Dataset, images_to_float
from .errors import DataFormatError

PROGRESS_FROM = 2000  # show a progress bar when decoding at least this many images up front
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _size_hw(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"ImageFolder: image_size must be an int or (height, width), "
                         f"got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"ImageFolder: image_size must be positive, got {image_size!r}")
    return h, w


def high_depth_to_8bit(img):
    """A 16-bit greyscale PIL image (modes ``I;16*`` and ``I``, what Pillow makes of a 16-bit
    PNG or TIFF) as an 8-bit ``L`` image keeping its top 8 bits; any other image unchanged.

    Pillow's ``convert("L")`` / ``convert("RGB")`` clips such images at 255 instead of scaling
    them, so everything above 1/256 of full scale turns white. Pillow itself reads 16-bit RGB
    files by keeping the top 8 bits; this does the same for greyscale.
    """
    from PIL import Image

    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    arr = np.asarray(img)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")


def decode_image(path: str | os.PathLike, size_hw: tuple[int, int] | None = None,
                 grayscale: bool = False) -> np.ndarray:
    """Decode one image file to uint8 ``(H, W, 3)`` (``(H, W)`` when grayscale).

    Args:
        path: the file.
        size_hw: resize to (height, width) with Pillow's bilinear filter (antialiased).
        grayscale: convert to one channel ("L") instead of RGB.

    Raises:
        DataFormatError: naming the file when Pillow cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = high_depth_to_8bit(img).convert("L" if grayscale else "RGB")  # convert() forces a full decode
            if size_hw is not None and img.size != (size_hw[1], size_hw[0]):
                img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataFormatError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


class ImageFolder(Dataset):
    """Images in ``root/<class name>/<file>``; class names sorted, label = position.

    Args:
        root: the folder of class folders. Files whose extension is not an image type
            (``.png .jpg .jpeg .bmp .gif .webp .tif .tiff .ppm .pgm``) and hidden files are skipped.
        transform: optional batch transform applied by ``get_batch`` / ``ds[i]``.
        image_size: resize every image to ``(size, size)`` (int) or ``(height, width)``. Without it
            all images must have the same size.
        grayscale: decode to one channel instead of RGB.
        lazy: keep file paths only and decode per batch (``data`` is then unavailable).

    Attributes:
        data: uint8 ``(N, H, W, 3)`` (``(N, H, W)`` if grayscale); targets: int64 ``(N,)``;
        classes; class_to_idx; samples: list of ``(path, label)``; name: the folder's name.

    Shape:
        ``ds[i]`` -> ``(x float32 (C, H, W) in [0, 1], label int)``.
    """

    def __init__(self, root, transform=None, image_size=None, grayscale: bool = False,
                 lazy: bool = False):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: root {self.root} is not a folder")
        self.size_hw = _size_hw(image_size)
        self.grayscale = bool(grayscale)
        self.lazy = bool(lazy)
        self.transform = transform
        self.name = self.root.name
        self.classes = sorted(d.name for d in self.root.iterdir()
                              if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"ImageFolder: no class folders in {self.root} "
                                    f"(expected {self.root}/<class name>/<image files>)")
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            files = sorted(p for p in (self.root / c).rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith("."))
            if not files:
                raise FileNotFoundError(f"ImageFolder: class folder {self.root / c} has no image "
                                        f"files ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples += [(p, self.class_to_idx[c]) for p in files]
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)
        self._data = None if self.lazy else self._decode_all()

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            raise AttributeError("ImageFolder(lazy=True) decodes images on demand and has no .data "
                                 "array; use get_batch(indices), or lazy=False")
        return self._data

    def _decode(self, paths: list, progress: bool = False) -> np.ndarray:
        items = paths
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(paths, desc=f"decoding {self.name}", unit="img", leave=False)
        images = [decode_image(p, self.size_hw, self.grayscale) for p in items]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            first = {}
            for p, im in zip(paths, images):
                first.setdefault(im.shape[:2], p)
            examples = ", ".join(f"{hw[0]}x{hw[1]} ({p})" for hw, p in list(first.items())[:3])
            raise DataFormatError(f"ImageFolder {self.root}: images have different sizes: {examples}; "
                                  f"pass image_size=... to resize them all")
        return np.stack(images)

    def _decode_all(self) -> np.ndarray:
        paths = [p for p, _ in self.samples]
        return self._decode(paths, progress=len(paths) >= PROGRESS_FROM)

    def _load_batch(self, idx: np.ndarray):
        images = self._data[idx] if self._data is not None else self._decode(
            [self.samples[i][0] for i in idx])
        return images_to_float(images), self.targets[idx]
