"""The last step of every convolution kernel on each output chunk: bias, then an optional
fused ReLU.

Why fuse: a chunk of output that a GEMM has just written is still in cache, so adding the
bias and clipping it there costs almost nothing, while a separate ReLU layer makes one more
pass over the whole activation in memory (measured on conv4's 28x28 layers at batch 64:
0.3-1.0 ms per ReLU). ``Sequential`` asks for the fusion when a Conv2d is followed by a
ReLU and nothing observes the intermediate (see ``containers.py``).
"""

from __future__ import annotations

import numpy as np


def finish_output(dst: np.ndarray, bias: np.ndarray | None, relu: bool) -> None:
    """In place on an output chunk (..., O): ``dst += bias``, then ``max(dst, 0)``."""
    if bias is not None:
        dst += bias
    if relu:
        np.maximum(dst, 0, out=dst)
