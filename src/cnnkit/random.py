"""One global random generator, so that ``cnnkit.manual_seed(s)`` makes a run reproducible.

Layers' default initialisation, Dropout masks, DataLoader shuffling and random transforms
draw from ``get_generator()`` unless they are given a ``numpy.random.Generator`` of their own.
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed cnnkit's global generator; returns it."""
    global _generator
    _generator = np.random.default_rng(int(seed))
    return _generator


def get_generator(generator: np.random.Generator | None = None) -> np.random.Generator:
    """``generator`` when given, else the global one."""
    return _generator if generator is None else generator


def get_rng_state() -> dict:
    """The global generator's state (a JSON-serialisable dict), for checkpoints."""
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a state from ``get_rng_state()``."""
    _generator.bit_generator.state = state
