"""cnnkit.models: the model zoo.

Build a model by name with ``create(name, **kwargs)`` (``names()`` lists them) or call its
function directly, e.g. ``cnnkit.models.resnet18(num_classes=10)``. Both ways stamp the model
with ``model.config = {"name": ..., "kwargs": {...}}`` so ``cnnkit.save`` / ``cnnkit.load``
can rebuild it without user code.

Model functions are imported on first use (PEP 562): ``import cnnkit.models`` stays cheap, and
each family lives in a small file of its own (small.py, cifar.py, vgg.py, squeezenet.py,
resnet.py, efficientnet_lite.py, fashion.py).
"""

from __future__ import annotations

import functools
import inspect
from importlib import import_module

from .registry import create, get_builder, names, register

_SUBMODULES = {"registry", "small", "cifar", "vgg", "squeezenet", "resnet", "efficientnet_lite", "fashion",
               "imagenet", "pretrained"}

__all__ = ["create", "names", "register", "get_builder", *names()]


def _zoo_function(name: str):
    """``cnnkit.models.<name>``: the builder, wrapped so its result carries ``model.config``."""
    builder = get_builder(name)
    signature = inspect.signature(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)  # positional arguments become keywords
        arguments = dict(bound.arguments)
        for pname, param in signature.parameters.items():
            if param.kind is param.VAR_KEYWORD and pname in arguments:
                arguments.update(arguments.pop(pname))
            elif param.kind is param.VAR_POSITIONAL and arguments.pop(pname, ()):
                raise TypeError(f"{name}(): pass arguments by keyword")
        return create(name, **arguments)

    return build


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name in names():
        value = _zoo_function(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnkit.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | _SUBMODULES)
