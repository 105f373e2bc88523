"""cnnkit: convolutional neural networks written from scratch on NumPy.

Every layer's forward and backward pass is hand-written NumPy, with PyTorch's vocabulary
(``cnnkit.nn.Conv2d``, ``state_dict``, ``train()`` / ``eval()``) and Keras-like comfort
(``cnnkit.train.fit``, ``summary``, callbacks, history).
"""

from ._lazy import lazy_exports

from .random import get_generator, manual_seed

__version__ = "0.1.0"

_EXPORTS = {
    "gradcheck": "gradient_check",
    "no_grad": "nn.module",
    "is_grad_enabled": "nn.module",
    "save": "io.checkpoint",
    "load": "io.checkpoint",
    "empty_cache": "nn._recycle",
    "set_num_threads": "nn._parallel",
    "get_num_threads": "nn._parallel",
}
_SUBPACKAGES = {"nn", "optim", "data", "train", "io", "models", "cli", "plots", "predict", "finetune"}

__all__ = ["manual_seed", "get_generator", "__version__", *_EXPORTS, *sorted(_SUBPACKAGES)]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBPACKAGES)
