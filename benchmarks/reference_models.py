"""The four reference networks of the speed benchmark, built twice from the same layer
list: once from cnnkit.nn layers, once from torch.nn layers (torch is imported lazily so
that the cnnkit side can run in a process without it).

Each spec is a list of (layer name, args, kwargs) with identical meaning in both libraries.
"""

from __future__ import annotations

import numpy as np

SPECS = {
    "lenet": ((1, 28, 28), [
        ("Conv2d", (1, 10, 5), {}), ("MaxPool2d", (2,), {}), ("ReLU", (), {}),
        ("Conv2d", (10, 20, 5), {}), ("MaxPool2d", (2,), {}), ("ReLU", (), {}),
        ("Flatten", (), {}), ("Linear", (320, 10), {}),
    ]),
    "seed000": ((1, 28, 28), [
        ("Conv2d", (1, 20, 3), {}), ("ReLU", (), {}), ("AvgPool2d", (2,), {}),
        ("Conv2d", (20, 50, 5), {}), ("ReLU", (), {}), ("AvgPool2d", (2,), {}),
        ("Flatten", (), {}), ("Linear", (800, 128), {}), ("ReLU", (), {}), ("Linear", (128, 10), {}),
    ]),
    "conv4": ((1, 28, 28), [
        ("Conv2d", (1, 32, 3), {"padding": 1}), ("ReLU", (), {}),
        ("Conv2d", (32, 32, 3), {"padding": 1}), ("ReLU", (), {}), ("MaxPool2d", (2,), {}),
        ("Conv2d", (32, 64, 3), {"padding": 1}), ("ReLU", (), {}),
        ("Conv2d", (64, 64, 3), {"padding": 1}), ("ReLU", (), {}), ("MaxPool2d", (2,), {}),
        ("Flatten", (), {}), ("Linear", (3136, 256), {}), ("ReLU", (), {}), ("Dropout", (0.5,), {}),
        ("Linear", (256, 10), {}),
    ]),
    "vgg_cifar": ((3, 32, 32), [
        ("Conv2d", (3, 64, 3), {"padding": 1}), ("ReLU", (), {}), ("MaxPool2d", (2,), {}),
        ("Conv2d", (64, 128, 3), {"padding": 1}), ("ReLU", (), {}), ("MaxPool2d", (2,), {}),
        ("Conv2d", (128, 256, 3), {"padding": 1}), ("ReLU", (), {}), ("MaxPool2d", (2,), {}),
        ("Conv2d", (256, 512, 3), {"padding": 1}), ("ReLU", (), {}),
        ("Conv2d", (512, 512, 3), {"padding": 1}), ("ReLU", (), {}), ("MaxPool2d", (2,), {}),
        ("Flatten", (), {}), ("Linear", (2048, 512), {}), ("ReLU", (), {}), ("Linear", (512, 10), {}),
    ]),
}
NAMES = list(SPECS)


def input_shape(name: str) -> tuple[int, int, int]:
    return SPECS[name][0]


def build_cnnkit(name: str, skip_first_input_grad: bool = True):
    """The cnnkit network. The first conv's input gradient is useless (it is the data);
    PyTorch skips it because the data tensor does not require grad, so we do too."""
    import cnnkit.nn as nn
    model = nn.Sequential(*[getattr(nn, layer)(*args, **kw) for layer, args, kw in SPECS[name][1]])
    if skip_first_input_grad:
        model.needs_input_grad = False
    return model


def build_torch(name: str, cnnkit_model=None):
    """The PyTorch twin; with ``cnnkit_model`` its weights are copied across."""
    import torch
    model = torch.nn.Sequential(*[getattr(torch.nn, layer)(*args, **kw) for layer, args, kw in SPECS[name][1]])
    if cnnkit_model is not None:
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in cnnkit_model.state_dict().items()}
        model.load_state_dict(sd)
    return model


def batch(name: str, n: int, seed: int = 0):
    """A random float32 batch and int64 labels (the same for both libraries)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *input_shape(name)), dtype=np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return x, y
