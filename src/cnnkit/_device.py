"""Devices: cnnkit computes on the CPU (NumPy). ``device`` and the availability probes
exist so that PyTorch scripts run unchanged; asking for another device is a clear error."""

from __future__ import annotations

__all__ = ["device", "parse_device", "check_device"]


class device:
    """A device name, as ``torch.device`` (``device("cpu")``, ``device("cuda", 0)``).

    Args:
        type: ``"cpu"`` (or another name, accepted here and refused when used).
        index: the device index (optional).
    """

    def __init__(self, type: "str | device" = "cpu", index: int | None = None):
        if isinstance(type, device):
            type, index = type.type, type.index
        name = str(type)
        if ":" in name:
            name, _, idx = name.partition(":")
            index = int(idx)
        self.type = name
        self.index = index

    def __eq__(self, other) -> bool:
        other = parse_device(other) if isinstance(other, (str, device)) else other
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device(type='{self.type}'" + ("" if self.index is None else f", index={self.index}") + ")"


def parse_device(obj) -> device:
    return obj if isinstance(obj, device) else device(obj)


def check_device(dev: device) -> None:
    """Refuse any device but the CPU, naming the one asked for."""
    if dev.type != "cpu":
        raise RuntimeError(f"device {str(dev)!r} is not available: cnnkit runs on the CPU (use 'cpu')")
