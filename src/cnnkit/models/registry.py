"""The model zoo's registry: build any model by name, so a checkpoint can rebuild its model.

``create(name, **kwargs)`` calls the registered builder and stamps the result with
``model.config = {"name": name, "kwargs": kwargs}``; ``cnnkit.save`` writes that config into the
checkpoint's metadata and ``cnnkit.load`` calls ``create`` again, so no user code is needed to
load a zoo model.

Built-in models are listed below as ``"module:function"`` strings and imported only when first
used: importing the registry stays cheap, and a model whose file is missing (or is being written)
does not break the others.
"""

from __future__ import annotations

import inspect
import json
from importlib import import_module
from typing import Any, Callable

# Name -> "module:function" (imported on first use) or the builder itself (after first use,
# or for models registered with ``@register``).
_BUILTIN: dict[str, str] = {
    # seed models for 28x28 greyscale images (MNIST / Fashion-MNIST)
    "lenet": "cnnkit.models.small:lenet",
    "scratch_cnn": "cnnkit.models.small:scratch_cnn",
    "convnet": "cnnkit.models.small:convnet",
    "fashion_cnn": "cnnkit.models.fashion:fashion_cnn",
    # 32x32 colour images (CIFAR-10)
    "alexnet_cifar": "cnnkit.models.cifar:alexnet_cifar",
    "vgg_cifar": "cnnkit.models.cifar:vgg_cifar",
    # ImageNet architectures with torchvision's structure and state_dict keys
    "vgg11": "cnnkit.models.vgg:vgg11",
    "vgg11_bn": "cnnkit.models.vgg:vgg11_bn",
    "vgg16": "cnnkit.models.vgg:vgg16",
    "vgg16_bn": "cnnkit.models.vgg:vgg16_bn",
    "resnet18": "cnnkit.models.resnet:resnet18",
    "squeezenet1_1": "cnnkit.models.squeezenet:squeezenet1_1",
    "efficientnet_lite0": "cnnkit.models.efficientnet_lite:efficientnet_lite0",
}

_registry: dict[str, str | Callable[..., Any]] = dict(_BUILTIN)


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_registry)


def register(name: str, *, overwrite: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding a model builder to the zoo under ``name``.

    Args:
        name: the name ``create`` will take.
        overwrite: allow replacing an existing entry (otherwise a clash is an error, so two
            models cannot silently shadow each other).

    Returns:
        The decorator; it returns the builder unchanged.

    Example::

        @cnnkit.models.register("tiny")
        def tiny(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: name must be a non-empty string, got {name!r}")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"register({name!r}): expected a callable model builder, got {type(fn).__name__}")
        if name in _registry and not overwrite and _registry[name] is not fn:
            raise ValueError(
                f"register: a model named {name!r} is already registered; "
                "pass overwrite=True to replace it"
            )
        _registry[name] = fn
        return fn

    return decorator


def get_builder(name: str) -> Callable[..., Any]:
    """The builder function registered under ``name`` (imported on first use).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        ImportError: the model's module cannot be imported.
    """
    if name not in _registry:
        raise KeyError(f"unknown model {name!r}; available models: {', '.join(names())}")
    entry = _registry[name]
    if isinstance(entry, str):
        module_name, func_name = entry.split(":")
        try:
            module = import_module(module_name)
        except ImportError as exc:
            raise ImportError(f"model {name!r}: cannot import its module {module_name}: {exc}") from exc
        entry = getattr(module, func_name)
        _registry[name] = entry
    return entry


def create(name: str, **kwargs: Any):
    """Build the zoo model ``name`` with keyword arguments ``kwargs``.

    Args:
        name: one of ``names()``.
        **kwargs: the builder's keyword arguments (e.g. ``num_classes``, ``in_channels``); they
            must be JSON-serialisable because they are stored in checkpoints.

    Returns:
        The model (a ``cnnkit.nn.Module``), with ``model.config = {"name": name, "kwargs": kwargs}``.
        A builder may set ``model.config`` itself to record the keyword arguments that rebuild
        it from a checkpoint (e.g. without ``pretrained=True``); those are kept.

    Raises:
        KeyError: unknown name. TypeError: an argument the builder does not take, or a value
        that is not JSON-serialisable.
    """
    builder = get_builder(name)
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as exc:
        raise TypeError(
            f"create({name!r}): {exc}; {name} takes {inspect.signature(builder)}"
        ) from None
    try:
        # Round trip through JSON so the config is exactly what a checkpoint will hold.
        config_kwargs = json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"create({name!r}): keyword arguments must be JSON-serialisable (they are saved in "
            f"checkpoints), got {kwargs!r}: {exc}"
        ) from None
    model = builder(**kwargs)
    own = getattr(model, "__dict__", {}).get("config")
    if isinstance(own, dict) and isinstance(own.get("kwargs"), dict):
        # The builder recorded the arguments that rebuild it (e.g. efficientnet_lite0 drops
        # pretrained=True: a checkpoint already holds the weights); keep those.
        config_kwargs = json.loads(json.dumps(own["kwargs"]))
    model.config = {"name": name, "kwargs": config_kwargs}
    return model


# Input sizes the built-in models need (height = width), for a check before one is built for a
# dataset: ("exact", s) for a classifier sized for s x s features, ("min", s) for a network
# whose poolings leave nothing of a smaller input. Models with an ``input_size`` argument adapt
# to the data (and check it themselves); the others take any size. tests/test_cli_train.py
# verifies every entry by running the model at and below the size.
INPUT_SIZES: dict[str, tuple[str, int]] = {
    "alexnet_cifar": ("exact", 32), "vgg_cifar": ("exact", 32),
    "vgg11": ("min", 32), "vgg11_bn": ("min", 32), "vgg16": ("min", 32), "vgg16_bn": ("min", 32),
    "squeezenet1_1": ("min", 17),
}


def input_size_problem(name: str, height: int, width: int) -> str | None:
    """None when model ``name`` can take ``height`` x ``width`` inputs, else what it needs
    (e.g. ``"32x32 inputs"``, ``"inputs of at least 32x32"``)."""
    kind, size = INPUT_SIZES.get(name, ("any", 0))
    if kind == "exact" and (height, width) != (size, size):
        return f"{size}x{size} inputs"
    if kind == "min" and min(height, width) < size:
        return f"inputs of at least {size}x{size}"
    return None
