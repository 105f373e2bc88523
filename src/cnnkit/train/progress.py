"""Progress display for ``fit``: a live tqdm bar per epoch plus one summary line per epoch.

The bar is for people watching a terminal; it turns itself off when stderr is not a terminal
(logs, CI, pipes), so log files get exactly one line per epoch and no carriage-return noise.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _stream_is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or fake streams
        return False


def format_epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    """The one-line epoch summary, e.g.
    ``epoch 3/10  loss 0.3124  acc 0.8875  val_loss 0.3301  val_acc 0.8810  lr 1.20e-03  41.2s  1456 img/s``.
    Metrics absent from ``logs`` (e.g. accuracy for a regression) are left out; a NaN or
    infinite value is printed as ``nan`` / ``inf``, never hidden. The learning rate is always
    in the same scientific format (``lr 1.00e-01``, ``lr 7.60e-02``), so the column lines up
    from epoch to epoch whatever the schedule does."""
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}"]
    for key, label in (("loss", "loss"), ("accuracy", "acc"), ("val_loss", "val_loss"),
                       ("val_accuracy", "val_acc")):
        value = logs.get(key)
        if value is not None:
            parts.append(f"{label} {value:.4f}")
    if logs.get("lr") is not None:
        parts.append(f"lr {logs['lr']:.2e}")
    if logs.get("time") is not None:
        parts.append(f"{logs['time']:.1f}s")
    if logs.get("images_per_sec") is not None:
        parts.append(f"{logs['images_per_sec']:.0f} img/s")
    return "  ".join(parts)


class _Bar:
    """A tqdm bar (``self._bar``, None when not shown), closed at the end of a ``with``."""

    _bar = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpochProgress(_Bar):
    """A tqdm bar over one epoch's batches showing running loss, accuracy and images/s.

    Args:
        epoch: 1-based epoch number (for the bar's label).
        epochs: total number of epochs.
        total: number of batches in the epoch (None when unknown).
        enabled: force the bar on / off; None (default) shows it only when ``file`` is a
            terminal.
        file: where the bar is drawn (stderr by default, so stdout keeps only summary lines).
        initial: batches already done (a run resumed in the middle of an epoch).
    """

    # Redrawing the postfix costs string formatting on every batch; a few times a second is enough.
    _REFRESH_SECONDS = 0.25

    def __init__(self, epoch: int, epochs: int, total: int | None, enabled: bool | None = None,
                 file=None, initial: int = 0):
        file = sys.stderr if file is None else file
        self.enabled = _stream_is_terminal(file) if enabled is None else bool(enabled)
        self._bar = None
        if self.enabled:
            self._bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch}/{epochs}", file=file,
                             leave=False, unit="batch", dynamic_ncols=True)
        self._last_refresh = 0.0

    def update(self, loss: float, accuracy: float | None, images_per_sec: float) -> None:
        """Advance by one batch; the values shown are the epoch's running averages."""
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.perf_counter()
        if now - self._last_refresh >= self._REFRESH_SECONDS:
            self._last_refresh = now
            post = {"loss": f"{loss:.4f}"}
            if accuracy is not None:
                post["acc"] = f"{accuracy:.4f}"
            post["img/s"] = f"{images_per_sec:.0f}"
            self._bar.set_postfix(post, refresh=False)


class EvalProgress(_Bar):
    """A tqdm bar over the batches of an evaluation (validation or test set), drawn on stderr
    only when it is a terminal, like :class:`EpochProgress`.

    Args:
        desc: the bar's label (e.g. ``"validation"``, ``"test"``).
        total: number of batches (None when unknown).
        enabled: force the bar on / off; None shows it only when ``file`` is a terminal.
        file: where the bar is drawn (stderr by default).
    """

    def __init__(self, desc: str, total: int | None, enabled: bool | None = None, file=None):
        file = sys.stderr if file is None else file
        self.enabled = _stream_is_terminal(file) if enabled is None else bool(enabled)
        self._bar = (tqdm(total=total, desc=desc, file=file, leave=False, unit="batch", dynamic_ncols=True)
                     if self.enabled else None)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
