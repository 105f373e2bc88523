"""cnnkit.nn: layers, containers and losses with PyTorch's names.

Names are imported on first use (PEP 562), so ``import cnnkit.nn`` stays cheap and each
layer family lives in a small file of its own.
"""

from .._lazy import lazy_exports

from .module import Module, Parameter

_EXPORTS = {
    "Conv2d": "conv", "ZeroPad2d": "conv",
    "MaxPool2d": "pooling", "AvgPool2d": "pooling", "AdaptiveAvgPool2d": "pooling",
    "Linear": "linear", "Flatten": "linear", "Identity": "linear",
    "ReLU": "activation", "ReLU6": "activation", "LeakyReLU": "activation", "Sigmoid": "activation",
    "Tanh": "activation", "Softmax": "activation", "LogSoftmax": "activation",
    "BatchNorm1d": "normalization", "BatchNorm2d": "normalization",
    "Dropout": "dropout",
    "Sequential": "containers", "Concat": "containers", "Residual": "containers",
    "ModuleList": "containers", "ModuleDict": "containers",
    "CrossEntropyLoss": "losses", "NLLLoss": "losses", "MSELoss": "losses", "L1Loss": "losses", "BCEWithLogitsLoss": "losses",
    "empty_cache": "_recycle", "gemm_backend": "_gemm",
}
_SUBMODULES = {"functional", "fusion", "init", "module", "conv", "pooling", "linear", "activation",
               "normalization", "dropout", "containers", "losses", "utils"}

__all__ = ["Module", "Parameter", *_EXPORTS, "functional", "init"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBMODULES)
