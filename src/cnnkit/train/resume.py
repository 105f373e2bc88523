"""Reading and restoring a data loader's shuffling state, for bit-exact resuming.

Bit-exact resuming needs every source of randomness back where it was: cnnkit's global
generator (``cnnkit.random.get_rng_state``: Dropout masks, random augmentations, shuffling
when a loader has no seed) and the DataLoader's own shuffling generator (here). The states
are plain dicts, stored as JSON in a checkpoint's metadata.
"""

from __future__ import annotations

import math
from typing import Any, Callable

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


# ------------------------------------------------------------------------------ validation
def _fail(source: str, field: str, expected: str, found: Any) -> None:
    from ..io.checkpoint import CheckpointError

    shown = repr(found)
    raise CheckpointError(f"{source}: training state {field} must be {expected}, found "
                          f"{shown[:120]}{'...' if len(shown) > 120 else ''}; the file is corrupt or was tampered with")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_train_state(state: Any, source: str, loader: Any = None) -> None:
    """Refuse a checkpoint's training state that no run could have written (negative epoch,
    a batch past the epoch's end, negative or non-finite partial sums, ragged history), so a
    tampered file cannot make a resumed run record nonsense such as an accuracy of -5988023.

    Raises:
        CheckpointError: one line naming ``source``, the field, what was expected and found.
    """
    if not isinstance(state, dict):
        _fail(source, "meta['train_state']", "an object", state)
    epoch, batch = state.get("epoch"), state.get("batch", 0)
    if not _is_int(epoch) or epoch < 0:
        _fail(source, "'epoch'", "an integer >= 0", epoch)
    n_batches = len(loader) if loader is not None and hasattr(loader, "__len__") else None
    if not _is_int(batch) or batch < 0 or (n_batches is not None and batch >= max(n_batches, 1)):
        _fail(source, "'batch'", f"an integer in [0, {n_batches}) (batches per epoch)"
              if n_batches is not None else "an integer >= 0", batch)
    if "rng" not in state or not isinstance(state["rng"], dict):
        _fail(source, "'rng'", "a generator state object", state.get("rng"))
    history = state.get("history") or {}
    epochs_done = history.get("epochs", []) if isinstance(history, dict) else None
    values = history.get("history", {}) if isinstance(history, dict) else None
    if not isinstance(epochs_done, list) or not all(_is_int(e) and 0 < e <= epoch for e in epochs_done) \
            or not isinstance(values, dict) or not all(
                isinstance(v, list) and len(v) == len(epochs_done) and all(_is_number(x) for x in v)
                for v in values.values()):
        _fail(source, "'history'", f"epoch numbers in [1, {epoch}] with one number per epoch for every metric",
              history)
    if not isinstance(state.get("callbacks", []), list):
        _fail(source, "'callbacks'", "a list", state.get("callbacks"))
    if batch > 0:
        partial = state.get("partial")
        if not isinstance(partial, dict) or not isinstance(state.get("epoch_start"), dict):
            _fail(source, "'partial' / 'epoch_start'", "objects (a mid-epoch checkpoint)", partial)
        seen, correct = partial.get("seen"), partial.get("correct")
        if not _is_int(seen) or seen < batch:
            _fail(source, "'partial.seen'", f"an integer >= {batch} (one sample per batch at least)", seen)
        if correct is not None and (not _is_int(correct) or not 0 <= correct <= seen):
            _fail(source, "'partial.correct'", f"an integer in [0, {seen}]", correct)
        for key in ("loss_sum", "elapsed"):
            v = partial.get(key)
            if not _is_number(v) or not math.isfinite(v) or (key == "elapsed" and v < 0):
                _fail(source, f"'partial.{key}'", "a finite number" + (" >= 0" if key == "elapsed" else ""), v)


def restore_rng(setter: Callable[[Any], None], state: Any, source: str) -> None:
    """``setter(state)`` with NumPy's complaints about a malformed state turned into one line."""
    try:
        setter(state)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        _fail(source, "'rng'", "a NumPy bit-generator state", f"{type(exc).__name__}: {exc}")
