"""cnnkit: convolutional neural networks written from scratch on NumPy.

Every operation's forward and backward pass is hand-written NumPy (``cnnkit.ops``), and a
small define-by-run autograd engine (``cnnkit.autograd``) chains them, so code is written
as in PyTorch: ``cnnkit.Tensor``, ``nn.Module`` subclasses with a ``forward()``,
``loss.backward()``, ``optimizer.step()``; ``import cnnkit as torch`` runs typical
PyTorch CNN scripts. Keras-like comfort too (``cnnkit.train.fit``, ``summary``, callbacks).
"""

from ._lazy import lazy_exports

from .random import get_generator, manual_seed

__version__ = "0.1.0"

_EXPORTS = {
    "gradcheck": "gradient_check",
    "Tensor": "_tensor", "Size": "_tensor",
    "device": "_device",
    "no_grad": "autograd.grad_mode", "enable_grad": "autograd.grad_mode", "is_grad_enabled": "autograd.grad_mode",
    "set_grad_enabled": "autograd.grad_mode", "inference_mode": "autograd.grad_mode",
    "cuda": "accelerators", "accelerator": "accelerators", "backends": "accelerators", "mps": "accelerators",
    **{name: "creation" for name in (
        "tensor", "as_tensor", "from_numpy", "zeros", "ones", "empty", "full", "randn", "rand", "randint",
        "randperm", "arange", "linspace", "eye", "zeros_like", "ones_like", "empty_like", "full_like",
        "randn_like", "rand_like", "cat", "concat", "stack", "flatten", "max", "min", "argmax", "argmin",
        "sum", "mean", "exp", "log", "sqrt", "abs", "clamp", "matmul", "maximum", "minimum", "where",
        "is_tensor", "numel", "softmax", "log_softmax", "relu", "sigmoid", "tanh", "allclose", "equal",
        "set_default_dtype", "get_default_dtype")},
    "save": "io.checkpoint",
    "load": "io.checkpoint",
    "empty_cache": "nn._recycle",
    "set_num_threads": "nn._parallel",
    "get_num_threads": "nn._parallel",
}
_SUBPACKAGES = {"nn", "optim", "data", "train", "io", "models", "cli", "plots", "predict", "finetune",
                "autograd", "ops", "utils"}

# PyTorch's dtype names (NumPy dtypes).
import numpy as _np

float32 = float = _np.dtype(_np.float32)
float64 = double = _np.dtype(_np.float64)
float16 = half = _np.dtype(_np.float16)
int64 = long = _np.dtype(_np.int64)
int32 = int = _np.dtype(_np.int32)
int16 = short = _np.dtype(_np.int16)
int8 = _np.dtype(_np.int8)
uint8 = _np.dtype(_np.uint8)
bool = _np.dtype(_np.bool_)  # noqa: A001  (PyTorch's name)
_DTYPES = ["float32", "float", "float64", "double", "float16", "half", "int64", "long", "int32", "int",
           "int16", "short", "int8", "uint8", "bool"]

__all__ = ["manual_seed", "get_generator", "__version__", *_DTYPES, *_EXPORTS, *sorted(_SUBPACKAGES)]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBPACKAGES)
