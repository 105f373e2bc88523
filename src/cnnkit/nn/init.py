"""Weight initialisation, with torch.nn.init's names, formulas and fan computation.

Every function fills its argument in place and returns it. The argument is a
``Parameter`` (its ``.data`` is filled) or a NumPy array. Random draws come from
``cnnkit.random.get_generator(generator)``: the global generator seeded by
``cnnkit.manual_seed`` unless a ``numpy.random.Generator`` is passed.

Example::

    w = cnnkit.nn.Parameter(np.empty((64, 3, 3, 3), np.float32))
    kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..random import get_generator
from .._tensor import Tensor

__all__ = [
    "calculate_gain", "calculate_fan_in_and_fan_out",
    "uniform_", "normal_", "constant_", "zeros_", "ones_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
]


def _array(tensor: Any, fn: str) -> np.ndarray:
    """The writable floating array behind ``tensor`` (a Tensor, a Parameter or an ndarray)."""
    arr = tensor.data if isinstance(tensor, Tensor) else tensor
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"init.{fn}: expected a Tensor, a Parameter or numpy.ndarray, got {type(tensor).__name__}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"init.{fn}: expected a floating array, got dtype {arr.dtype}")
    return arr


def _fill(tensor: Any, values: np.ndarray, fn: str) -> Any:
    arr = _array(tensor, fn)
    # Draws are made in float32 (half the memory and time of float64 on VGG-sized layers)
    # and cast once, so float32 and float64 parameters get the same numbers for the same seed.
    arr[...] = values.astype(arr.dtype, copy=False)
    return tensor


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain).

    Args:
        nonlinearity: 'linear', 'conv1d', 'conv2d', 'conv3d', 'conv_transpose*', 'sigmoid',
            'tanh', 'relu', 'leaky_relu' or 'selu'.
        param: the negative slope for 'leaky_relu' (default 0.01).

    Returns:
        The gain as a Python float.
    """
    linear_fns = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d", "sigmoid"}
    if nonlinearity in linear_fns:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def calculate_fan_in_and_fan_out(tensor: Any) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight laid out as PyTorch does: (out, in, *kernel).

    fan_in = in * prod(kernel), fan_out = out * prod(kernel).
    """
    arr = _array(tensor, "calculate_fan_in_and_fan_out")
    if arr.ndim < 2:
        raise ValueError(
            f"init: fan in and fan out cannot be computed for an array with fewer than 2 "
            f"dimensions (got shape {arr.shape})"
        )
    receptive = int(np.prod(arr.shape[2:])) if arr.ndim > 2 else 1
    return arr.shape[1] * receptive, arr.shape[0] * receptive


def _fan(tensor: Any, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor: Any, a: float = 0.0, b: float = 1.0, generator: np.random.Generator | None = None) -> Any:
    """Fill with U(a, b)."""
    arr = _array(tensor, "uniform_")
    values = get_generator(generator).random(arr.shape, dtype=np.float32)
    values *= np.float32(b - a)
    values += np.float32(a)
    return _fill(tensor, values, "uniform_")


def normal_(tensor: Any, mean: float = 0.0, std: float = 1.0, generator: np.random.Generator | None = None) -> Any:
    """Fill with N(mean, std**2)."""
    arr = _array(tensor, "normal_")
    values = get_generator(generator).standard_normal(arr.shape, dtype=np.float32)
    values *= np.float32(std)
    values += np.float32(mean)
    return _fill(tensor, values, "normal_")


def constant_(tensor: Any, val: float, _fn: str = "constant_") -> Any:
    """Fill with the constant ``val``."""
    _array(tensor, _fn)[...] = val
    return tensor


def zeros_(tensor: Any) -> Any:
    """Fill with 0."""
    return constant_(tensor, 0.0, "zeros_")


def ones_(tensor: Any) -> Any:
    """Fill with 1."""
    return constant_(tensor, 1.0, "ones_")


def xavier_uniform_(tensor: Any, gain: float = 1.0, generator: np.random.Generator | None = None) -> Any:
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a, generator=generator)


def xavier_normal_(tensor: Any, gain: float = 1.0, generator: np.random.Generator | None = None) -> Any:
    """Glorot normal: N(0, std**2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator=generator)


def kaiming_uniform_(tensor: Any, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: np.random.Generator | None = None) -> Any:
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    ``Linear`` and ``Conv2d`` use ``a=sqrt(5)`` by default, as PyTorch does, which gives
    b = 1 / sqrt(fan_in).
    """
    fan = _fan(tensor, mode)
    if fan == 0:
        return tensor  # PyTorch warns and leaves a zero-element tensor alone
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound, generator=generator)


def kaiming_normal_(tensor: Any, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: np.random.Generator | None = None) -> Any:
    """He normal: N(0, std**2) with std = gain / sqrt(fan)."""
    fan = _fan(tensor, mode)
    if fan == 0:
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std, generator=generator)
