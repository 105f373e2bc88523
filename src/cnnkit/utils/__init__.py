"""cnnkit.utils: PyTorch's ``torch.utils`` names (``cnnkit.utils.data``)."""

from . import data

__all__ = ["data"]
