"""The random-number state a resumed run needs, and how to read / restore it.

Bit-exact resuming needs every source of randomness back where it was: cnnkit's global
generator (Dropout masks, random augmentations, shuffling when a loader has no seed) and the
DataLoader's own shuffling generator. Everything here is JSON-able so it fits in a
checkpoint's metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import random as cnnkit_random


def _jsonable(obj: Any) -> Any:
    """Convert NumPy scalars / arrays inside a (nested) state to plain Python values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def global_rng_state() -> dict:
    return _jsonable(cnnkit_random.get_rng_state())


def set_global_rng_state(state: dict) -> None:
    cnnkit_random.set_rng_state(state)


def loader_rng_state(loader: Any) -> Any:
    """The shuffling state of ``loader``: its ``state_dict()`` when it has one, else its
    generator's state; None for loaders without randomness of their own."""
    if loader is None:
        return None
    if hasattr(loader, "state_dict"):
        return _jsonable(loader.state_dict())
    gen = getattr(loader, "generator", None)
    if isinstance(gen, np.random.Generator):
        return _jsonable(gen.bit_generator.state)
    return None


def set_loader_rng_state(loader: Any, state: Any) -> None:
    if loader is None or state is None:
        return
    if hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state)
        return
    gen = getattr(loader, "generator", None)
    if isinstance(gen, np.random.Generator):
        gen.bit_generator.state = state
        return
    raise ValueError(
        f"cannot restore the shuffling state of {type(loader).__name__}: it has no "
        "load_state_dict() and no numpy Generator attribute 'generator'"
    )
