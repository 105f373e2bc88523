"""Documented limits on sizes that a file or an argument can ask for.

Every size read from a file is checked against the bytes that back it before anything is
allocated. Where no such bytes exist -- a compressed archive member, an image shape in a
checkpoint's metadata, an input shape on the command line -- these limits apply instead, so
that no small file or mistyped number can make cnnkit allocate gigabytes.
"""

from __future__ import annotations

from typing import Any

# Deflate cannot expand data more than 1032 times (RFC 1951: a 258-byte match per 2 bits at
# best), so a compressed member declaring a larger ratio is lying about its size.
MAX_DEFLATE_RATIO = 1032
# One input image of a model: channels x height x width elements (2**26 = a 4096x4096 RGB image
# is 50 M elements; 256 MiB of float32 per image is far above any model in the zoo).
MAX_INPUT_ELEMENTS = 1 << 26
MAX_INPUT_SIDE = 16384
MAX_INPUT_CHANNELS = 4096
# `cnnkit summary` runs one image through the model, whose activations (and im2col columns,
# 9x larger) dwarf the input: VGG-16 needs about 4 GB at 512 x 512 pixels.
MAX_SUMMARY_PIXELS = 512 * 512
# ... and builds its classifier: VGG's Linear(4096, 32768) is 512 MiB.
MAX_SUMMARY_CLASSES = 32768
# Classes of a classifier (ImageNet-21k has 21841).
MAX_CLASSES = 1 << 20
# Nesting depth of containers in a .pth pickle (a state dict is 1-3 levels deep).
MAX_NESTING = 100


def check_input_shape(shape: Any, what: str) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` of positive ints within the limits above.

    Args:
        shape: the value to check (a sequence of 3 ints).
        what: how the value is named in the error message (an argument or a file's field).

    Raises:
        ValueError: one line naming ``what``, the expectation and the value found.
    """
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        raise ValueError(f"{what} must be [C, H, W] (3 integers), found {shape!r}")
    c, h, w = shape
    if min(shape) < 1:
        raise ValueError(f"{what} must have positive sizes, found {list(shape)}")
    if c > MAX_INPUT_CHANNELS or h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE or c * h * w > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{what} {list(shape)} is too large: at most {MAX_INPUT_CHANNELS} channels, "
                         f"sides of {MAX_INPUT_SIDE} and {MAX_INPUT_ELEMENTS} elements (C*H*W) per image, "
                         f"found {c * h * w} elements")
    return c, h, w
