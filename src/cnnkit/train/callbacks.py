"""Callbacks: code that ``fit`` calls at fixed points of training (Keras' vocabulary).

Every callback gets ``self.loop`` (the running training loop: ``model``, ``optimizer``,
``scheduler``, ``history``, ``epochs``, ``stop_training``, ``save_checkpoint(path)`` and
``request_checkpoint(path)``) before ``on_train_begin``. Epoch numbers are 1-based: ``on_epoch_end(3, logs)`` follows the third epoch.

A callback whose decisions depend on the past (the best value so far, a patience counter)
keeps that in ``state_dict()`` so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any

import numpy as np


class Callback:
    """Base class: override the hooks you need; all default to doing nothing.

    Hooks (Keras's names; batch and epoch numbers are 1-based):

    - ``on_train_begin(logs)``, ``on_train_end(logs)``;
    - ``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)`` (``logs``: the epoch's
      metrics, as in the History);
    - ``on_train_batch_begin(batch, logs)``, ``on_train_batch_end(batch, logs)`` (``logs`` has
      the batch's ``loss``, ``size`` and, for classification, ``accuracy``); by default they call
      ``on_batch_begin`` / ``on_batch_end``, Keras's older names, so either name works;
    - ``on_test_begin(logs)``, ``on_test_end(logs)`` around the validation pass at the end of
      each epoch, and ``on_test_batch_begin(batch, logs)``, ``on_test_batch_end(batch, logs)``
      (``logs``: ``size``, and ``loss`` when fit has a loss) for each of its batches;
    - ``on_interrupt(epoch, logs)``: training stopped by Ctrl-C between two batches (the state
      is consistent and resumable); cnnkit's own.

    Keras's ``on_predict_*`` hooks have no equivalent (fit never predicts): ``fit`` warns when a
    callback defines one, or any other ``on_*`` method it would never call.
    Set ``self.loop.stop_training = True`` to end training after the current epoch.
    """

    loop: Any = None

    def set_loop(self, loop) -> None:
        self.loop = loop

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_end(batch, logs)

    def on_test_begin(self, logs: dict | None = None) -> None: ...
    def on_test_end(self, logs: dict | None = None) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
    def on_interrupt(self, epoch: int, logs: dict | None = None) -> None: ...

    def state_dict(self) -> dict:
        """JSON-able state saved in checkpoints so a resumed run behaves as an uninterrupted one."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


def warn_about_unused_hooks(callbacks) -> list[str]:
    """Warn (``UserWarning``) about every ``on_*`` method of a callback that ``fit`` never calls:
    Keras's ``on_predict_*`` hooks, and misspelt hook names. Returns the warning texts."""
    import warnings

    texts = []
    for cb in callbacks:
        cls = type(cb)
        own = {name for klass in cls.__mro__ if klass not in (Callback, object)
               for name in vars(klass) if name.startswith("on_") and callable(getattr(cb, name, None))}
        for name in sorted(own - set(HOOKS)):
            if name.startswith("on_predict"):
                why = "a Keras hook with no equivalent here: fit has no predict phase"
            else:
                why = "not a hook fit calls"
            texts.append(f"{cls.__name__}.{name} will never be called ({why}); the hooks are "
                         + ", ".join(HOOKS))
    for text in texts:
        warnings.warn(text, UserWarning, stacklevel=3)
    return texts


def _resolve_mode(owner: str, monitor: str, mode: str) -> str:
    if mode == "auto":
        return "max" if ("acc" in monitor or "f1" in monitor) else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}: mode must be 'min', 'max' or 'auto', got {mode!r}")
    return mode


def _monitored_value(owner: str, monitor: str, logs: dict) -> float:
    value = logs.get(monitor)
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{owner}: monitor={monitor!r} is nan this epoch; a NaN cannot be compared with the "
                         "best value so far")
    if value is None:
        available = ", ".join(k for k, v in logs.items() if isinstance(v, (int, float))) or "none"
        raise ValueError(
            f"{owner}: monitor={monitor!r} is not among this epoch's metrics ({available}); "
            f"pass a val_loader to fit() for 'val_*' metrics, or monitor one of those"
        )
    return float(value)


class _Improvement:
    """Tracks the best value of a metric (shared by ModelCheckpoint and EarlyStopping)."""

    def __init__(self, mode: str, min_delta: float = 0.0):
        self.mode, self.min_delta = mode, abs(float(min_delta))
        self.best: float | None = None
        self.best_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def record(self, value: float, epoch: int) -> None:
        self.best, self.best_epoch = value, epoch


class ModelCheckpoint(Callback):
    """Save resumable checkpoints (``cnnkit.save``: model, optimizer, scheduler, RNG states,
    epoch, history) every ``every_n_epochs`` epochs and / or when a metric improves.

    Args:
        filepath: the ``.safetensors`` file to write; may contain ``{epoch}`` /
            ``{epoch:03d}`` and metric fields such as ``{val_accuracy:.4f}`` to keep several.
        monitor: the metric that defines "best" (e.g. ``'val_loss'``, ``'val_accuracy'``);
            required when ``save_best_only``.
        mode: ``'min'``, ``'max'`` or ``'auto'`` (max for accuracy / F1 metrics, else min).
        save_best_only: write only when ``monitor`` improves on the best value so far.
        every_n_epochs: periodic saving interval (ignored when ``save_best_only``).
        meta: extra JSON-able metadata written into every checkpoint (e.g. ``classes``,
            ``input_shape``, ``normalize`` for ``cnnkit predict``).
        save_on_interrupt: on Ctrl-C, write the exact mid-epoch state so ``--resume``
            continues from that batch. Default: True unless ``save_best_only``.

    Attributes:
        best (float | None), best_epoch (int | None), last_saved (str | None).
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str | None = None, mode: str = "auto",
                 save_best_only: bool = False, every_n_epochs: int = 1, meta: dict | None = None,
                 save_on_interrupt: bool | None = None):
        if save_best_only and not monitor:
            raise ValueError("ModelCheckpoint: save_best_only=True needs monitor= (e.g. 'val_loss')")
        if int(every_n_epochs) < 1:
            raise ValueError(f"ModelCheckpoint: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.mode = _resolve_mode("ModelCheckpoint", monitor, mode) if monitor else "min"
        self.save_best_only = bool(save_best_only)
        self.every_n_epochs = int(every_n_epochs)
        self.meta = dict(meta or {})
        self.save_on_interrupt = (not save_best_only) if save_on_interrupt is None else bool(save_on_interrupt)
        self._tracker = _Improvement(self.mode)
        self.last_saved: str | None = None

    @property
    def best(self) -> float | None:
        return self._tracker.best

    @property
    def best_epoch(self) -> int | None:
        return self._tracker.best_epoch

    def _path(self, epoch: int, logs: dict) -> str:
        fields = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        try:
            return self.filepath.format(epoch=epoch, **fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"ModelCheckpoint: cannot fill filepath {self.filepath!r} ({exc}); "
                f"available fields: epoch, {', '.join(fields)}"
            ) from None

    def _save(self, epoch: int, logs: dict, now: bool = False) -> None:
        path = self._path(epoch, logs)
        if now:
            self.loop.save_checkpoint(path, meta=self.meta)
        else:
            self.loop.request_checkpoint(path, meta=self.meta)
        self.last_saved = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        improved = False
        if self.monitor:
            value = _monitored_value("ModelCheckpoint", self.monitor, logs)
            if self._tracker.improved(value):
                self._tracker.record(value, epoch)
                improved = True
        if self.save_best_only:
            if improved:
                self._save(epoch, logs)
        elif epoch % self.every_n_epochs == 0:
            self._save(epoch, logs)

    def on_interrupt(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_on_interrupt:
            self._save(epoch, {**(logs or {})}, now=True)

    def state_dict(self) -> dict:
        return {"best": self._tracker.best, "best_epoch": self._tracker.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self._tracker.best = state.get("best")
        self._tracker.best_epoch = state.get("best_epoch")


class EarlyStopping(Callback):
    """Stop training when a metric has not improved for ``patience`` epochs.

    Args:
        monitor: metric to watch (default ``'val_loss'``).
        mode: ``'min'``, ``'max'`` or ``'auto'``.
        patience: epochs without improvement before stopping.
        min_delta: an improvement must beat the best value by more than this.
        restore_best_weights: at the end of training put the best epoch's weights (and
            buffers) back into the model. The copy lives in memory: after a resume it covers
            the epochs since the resume.

    Attributes:
        stopped_epoch (int | None): the epoch after which training was stopped.
        best (float | None), best_epoch (int | None), wait (int).
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 5,
                 min_delta: float = 0.0, restore_best_weights: bool = False):
        if int(patience) < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.monitor = monitor
        self.mode = _resolve_mode("EarlyStopping", monitor, mode)
        self.patience = int(patience)
        self.restore_best_weights = bool(restore_best_weights)
        self._tracker = _Improvement(self.mode, min_delta)
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_weights: dict[str, np.ndarray] | None = None

    @property
    def best(self) -> float | None:
        return self._tracker.best

    @property
    def best_epoch(self) -> int | None:
        return self._tracker.best_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = _monitored_value("EarlyStopping", self.monitor, logs or {})
        if self._tracker.improved(value):
            self._tracker.record(value, epoch)
            self.wait = 0
            if self.restore_best_weights:
                self._best_weights = self.loop.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.loop.stop_training = True
            if getattr(self.loop, "verbose", 0):
                self.loop.print(f"Early stopping after epoch {epoch}: {self.monitor} has not improved for "
                                f"{self.wait} epoch{'s' if self.wait != 1 else ''} (best {self.best:.4g} "
                                f"at epoch {self.best_epoch})"
                                + ("; restoring that epoch's weights" if self.restore_best_weights else ""))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best_weights and self._best_weights is not None:
            self.loop.model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict:
        return {"best": self._tracker.best, "best_epoch": self._tracker.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self._tracker.best = state.get("best")
        self._tracker.best_epoch = state.get("best_epoch")
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = state.get("stopped_epoch")


class CSVLogger(Callback):
    """Write the history as CSV (one row per epoch: ``epoch`` then every metric).

    The whole file is rewritten atomically from the run's history after each epoch, so a run
    killed at any moment leaves a valid file, and a resumed run (whose history comes back from
    the checkpoint) never duplicates or loses rows.

    Args:
        filename: the ``.csv`` path.
        separator: field separator.
    """

    root_only = True  # under mpiexec only rank 0 writes the file (cnnkit.distributed)

    def __init__(self, filename: str | os.PathLike, separator: str = ","):
        self.filename = os.fspath(filename)
        self.separator = separator

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        write_history_csv(self.loop.history, self.filename, self.separator)


def write_history_csv(history, filename: str | os.PathLike, separator: str = ",") -> None:
    """Write a :class:`History` as CSV atomically (``epoch`` column first)."""
    from ..io.atomic import atomic_write_bytes

    keys = list(history.history)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=separator, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for i, epoch in enumerate(history.epochs):
        writer.writerow([epoch, *(_csv_number(history.history[k][i]) for k in keys)])
    atomic_write_bytes(os.fspath(filename), buf.getvalue().encode("utf-8"))


def _csv_number(value: float) -> str:
    # NaN (a diverged value, or a metric an epoch did not have) is written as "nan", which
    # csv readers and pandas parse back; an empty cell would hide it.
    return repr(float(value))
