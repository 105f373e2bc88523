"""Lazy package exports (PEP 562), shared by ``cnnkit``, ``cnnkit.nn`` and ``cnnkit.data``.

A package lists which public name lives in which submodule; the submodule is imported the
first time the name is used, so ``import cnnkit`` stays cheap and each family of classes
keeps a small file of its own.
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, str],
                 submodules: set[str] | frozenset[str] = frozenset()) -> tuple[Callable, Callable]:
    """Build a package's ``__getattr__`` and ``__dir__``.

    Args:
        package: the package's ``__name__``.
        namespace: the package's ``globals()``; resolved names are cached there.
        exports: public name -> submodule (relative, without the leading dot) defining it.
        submodules: submodules reachable as attributes (``cnnkit.nn.functional``).

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """

    def __getattr__(name: str):
        if name in exports:
            value = getattr(import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        if name in submodules:
            return import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace.get("__all__", ())) | set(exports) | set(submodules))

    return __getattr__, __dir__
