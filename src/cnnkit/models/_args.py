"""Argument checks shared by the zoo's builders, so bad arguments fail with a clear message."""

from __future__ import annotations


def check_positive_ints(model: str, **values: object) -> None:
    """Raise ValueError naming ``model`` and the argument unless every value is an int >= 1."""
    for arg, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{model}: {arg} must be a positive integer, got {value!r}")


def check_probability(model: str, arg: str, value: object) -> None:
    """Raise ValueError unless ``value`` is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{model}: {arg} must be a probability in [0, 1), got {value!r}")
