"""cnnkit.io: safe files.

* ``save`` / ``load`` / ``load_checkpoint``: cnnkit checkpoints, one safetensors file with the
  weights, optimizer state and a JSON description (architecture, scheduler, user meta).
* ``load_torch`` / ``read_torch``: PyTorch ``.pth`` files (zip and legacy formats) read
  without torch through a restricted unpickler that refuses anything but tensors.
* ``save_torch``: write a state dict that torch reads with ``torch.load`` and ``weights_only=True``.
* ``atomic_open`` / ``atomic_write_bytes`` / ``atomic_write_text``: every save goes through
  these, so an interrupted write never replaces a good file with a broken one.
"""

from .atomic import atomic_open, atomic_write_bytes, atomic_write_text
from .checkpoint import Checkpoint, CheckpointError, load, load_checkpoint, save
from .torch_pickle import TorchFileError
from .torch_reader import load_torch, read_torch
from .torch_writer import save_torch

__all__ = [
    "save", "load", "load_checkpoint", "Checkpoint", "CheckpointError",
    "load_torch", "read_torch", "save_torch", "TorchFileError",
    "atomic_open", "atomic_write_bytes", "atomic_write_text",
]
