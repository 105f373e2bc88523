"""cnnkit.nn: layers, containers and losses with PyTorch's names.

Names are imported on first use (PEP 562), so ``import cnnkit.nn`` stays cheap and each
layer family lives in a small file of its own.
"""

from importlib import import_module

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
    "CrossEntropyLoss": "losses", "MSELoss": "losses", "L1Loss": "losses", "BCEWithLogitsLoss": "losses",
}
_SUBMODULES = {"functional", "init", "module", "conv", "pooling", "linear", "activation",
               "normalization", "dropout", "containers", "losses"}

__all__ = ["Module", "Parameter", *_EXPORTS, "functional", "init"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnnkit.nn' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
