"""cnnkit: convolutional neural networks written from scratch on NumPy.

Every layer's forward and backward pass is hand-written NumPy, with PyTorch's vocabulary
(``cnnkit.nn.Conv2d``, ``state_dict``, ``train()`` / ``eval()``) and Keras-like comfort
(``cnnkit.train.fit``, ``summary``, callbacks, history).
"""

from importlib import import_module

from .random import get_generator, manual_seed

__version__ = "0.1.0"

_EXPORTS = {
    "gradcheck": "gradient_check",
    "no_grad": "nn.module",
    "is_grad_enabled": "nn.module",
    "save": "io.checkpoint",
    "load": "io.checkpoint",
}
_SUBPACKAGES = {"nn", "optim", "data", "train", "io", "models", "cli", "plots"}

__all__ = ["manual_seed", "get_generator", "__version__", *_EXPORTS, *sorted(_SUBPACKAGES)]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
