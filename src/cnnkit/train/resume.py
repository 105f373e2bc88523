"""Reading and restoring a data loader's shuffling state, for bit-exact resuming.

Bit-exact resuming needs every source of randomness back where it was: cnnkit's global
generator (``cnnkit.random.get_rng_state``: Dropout masks, random augmentations, shuffling
when a loader has no seed) and the DataLoader's own shuffling generator (here). The states
are plain dicts, stored as JSON in a checkpoint's metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def loader_rng_state(loader: Any) -> Any:
    """The shuffling state of ``loader``: its ``state_dict()`` when it has one, else its
    generator's state; None for loaders without randomness of their own."""
    if loader is None:
        return None
    if hasattr(loader, "state_dict"):
        return loader.state_dict()
    gen = getattr(loader, "generator", None)
    if isinstance(gen, np.random.Generator):
        return gen.bit_generator.state
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
