"""The probes PyTorch scripts start with: only the CPU is there.

``cnnkit.cuda.is_available()`` and ``cnnkit.accelerator.is_available()`` are False,
``cnnkit.backends.cudnn`` takes its usual settings and ignores them, so a script's
``device = torch.device("cuda" if torch.cuda.is_available() else "cpu")`` picks the CPU.
"""

from __future__ import annotations

from types import SimpleNamespace

__all__ = ["cuda", "accelerator", "backends", "mps"]


def _false(*args, **kwargs) -> bool:
    return False


def _zero(*args, **kwargs) -> int:
    return 0


def _nothing(*args, **kwargs) -> None:
    return None


cuda = SimpleNamespace(is_available=_false, device_count=_zero, manual_seed=_nothing, manual_seed_all=_nothing,
                       synchronize=_nothing, empty_cache=_nothing, is_initialized=_false)
mps = SimpleNamespace(is_available=_false, is_built=_false, manual_seed=_nothing)
accelerator = SimpleNamespace(is_available=_false, current_accelerator=_nothing, device_count=_zero)
backends = SimpleNamespace(
    cudnn=SimpleNamespace(benchmark=False, deterministic=False, enabled=False, is_available=_false),
    mps=mps,
    mkldnn=SimpleNamespace(is_available=_false),
)
