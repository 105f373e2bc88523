"""Grad mode: whether Functions record the graph (PyTorch's ``no_grad`` / ``enable_grad``).

The one global switch of the library. Under ``no_grad()`` no node is recorded and no
Function saves anything for a backward pass, so inference holds one layer's activations at
a time.
"""

from __future__ import annotations

import functools
from typing import Callable

_enabled = True


def is_grad_enabled() -> bool:
    """False inside ``no_grad()`` (or ``set_grad_enabled(False)``)."""
    return _enabled


class set_grad_enabled:
    """Set grad mode to ``mode``; as a context manager the previous mode comes back on exit.

    Args:
        mode: True records the graph, False does not.
    """

    def __init__(self, mode: bool):
        global _enabled
        self._previous = _enabled
        _enabled = bool(mode)

    def __enter__(self) -> "set_grad_enabled":
        return self

    def __exit__(self, *exc) -> None:
        global _enabled
        _enabled = self._previous


class _Mode:
    """Base of ``no_grad`` / ``enable_grad``: a context manager and a decorator."""

    mode = True

    def __enter__(self):
        global _enabled
        self._previous = _enabled
        _enabled = self.mode
        return self

    def __exit__(self, *exc) -> None:
        global _enabled
        _enabled = self._previous

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)

        return wrapper


class no_grad(_Mode):
    """Context manager (and decorator) for inference: nothing is recorded, nothing saved.

    Example::

        with cnnkit.no_grad():
            logits = model(images)
    """

    mode = False


class enable_grad(_Mode):
    """Context manager (and decorator) that records the graph again inside ``no_grad()``."""

    mode = True


class inference_mode(no_grad):
    """PyTorch's stricter ``no_grad``; here the same as ``no_grad`` (accepts ``mode``)."""

    def __init__(self, mode: bool = True):
        self.mode = not mode
