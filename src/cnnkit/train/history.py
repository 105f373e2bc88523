"""History: the per-epoch record that ``fit`` returns (Keras' ``History`` vocabulary)."""

from __future__ import annotations

import math


class History:
    """Per-epoch metric values collected by :func:`cnnkit.train.fit`.

    Attributes:
        history (dict[str, list[float]]): one list per metric, e.g. ``'loss'``, ``'accuracy'``,
            ``'val_loss'``, ``'val_accuracy'``, ``'lr'``, ``'time'``; entry ``i`` belongs to
            ``epochs[i]``. A metric missing in some epoch is stored as NaN so every list has
            the same length.
        epochs (list[int]): the 1-based epoch numbers recorded (a resumed run starts above 1).

    Example:
        >>> h = History(); h.append(1, {"loss": 0.5}); h.history["loss"]
        [0.5]
    """

    def __init__(self, history: dict | None = None, epochs: list[int] | None = None):
        self.history: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}
        self.epochs: list[int] = list(epochs or [])

    def append(self, epoch: int, logs: dict) -> None:
        """Record the metrics of one epoch (numbers only; other values are ignored)."""
        n = len(self.epochs)
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                # A metric first seen now gets NaN for the epochs before it.
                self.history.setdefault(key, [math.nan] * n).append(float(value))
        self.epochs.append(int(epoch))
        for values in self.history.values():
            if len(values) < n + 1:
                values.append(math.nan)

    def __len__(self) -> int:
        return len(self.epochs)

    def last(self, key: str, default: float | None = None) -> float | None:
        """The latest value of ``key`` (``default`` when it was never recorded)."""
        values = self.history.get(key)
        return values[-1] if values else default

    def to_dict(self) -> dict:
        """A JSON-able copy (for checkpoint meta), undone by :meth:`from_dict`."""
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, d: dict | None) -> "History":
        d = d or {}
        return cls(d.get("history"), d.get("epochs"))

    def __repr__(self) -> str:
        return f"History(epochs={len(self)}, keys={list(self.history)})"
