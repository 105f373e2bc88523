"""``fit`` and ``evaluate``: the training loop (Keras-like comfort over PyTorch-like parts).

One training step is exactly::

    model.train(); optimizer.zero_grad(); out = model(x); loss = loss_fn(out, y)
    loss.backward(); optimizer.step(); [scheduler.step()  # per batch]

Interrupting: the first Ctrl-C asks the loop to stop after the current batch; the loop then
lets ``ModelCheckpoint`` callbacks save the exact state (mid-epoch included) and raises
:class:`TrainingInterrupted`. A second Ctrl-C aborts at once. A checkpoint written by the loop
(at an epoch end or on interrupt) passed back as ``fit(..., resume=path)`` continues the run so
that it ends with bit-for-bit the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any, Callable, Iterable

import numpy as np

from ..autograd.grad_mode import no_grad
from ..creation import as_tensor
from ..random import get_rng_state, set_rng_state
from . import resume as rs
from .callbacks import Callback, warn_about_unused_hooks
from .history import History
from .progress import EpochProgress, EvalProgress, format_epoch_line

# Schedulers whose documented use is one step per batch.
_STEP_SCHEDULERS = {"OneCycleLR", "CyclicLR"}
# Schedulers whose step() takes the monitored metric: fit passes the epoch's validation loss
# (the training loss when there is no validation data).
_METRIC_SCHEDULERS = {"ReduceLROnPlateau"}


def _steps_with_metric(scheduler) -> bool:
    return any(k.__name__ in _METRIC_SCHEDULERS for k in type(scheduler).__mro__)


class TrainingDiverged(ValueError):
    """Raised by :func:`fit` when the loss (or a weight) stops being a finite number.

    Nothing of the diverged epoch is saved: the checkpoints on disk stay those of the last
    good epoch (``last_checkpoint``, None when none was written or resumed from).

    Attributes:
        epoch (int), batch (int): where it happened (batch 0: at the epoch's end).
        what (str): e.g. ``"the loss is nan"``; last_checkpoint (str | None).
    """

    def __init__(self, epoch: int, batch: int, what: str, lr: float | None, last_checkpoint: str | None):
        self.epoch, self.batch, self.what, self.last_checkpoint = epoch, batch, what, last_checkpoint
        where = f"epoch {epoch}, batch {batch}" if batch else f"the end of epoch {epoch}"
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                else "no checkpoint was written")
        super().__init__(f"training diverged: {what} at {where}"
                         + (f" (lr {lr:.3g})" if lr is not None else "")
                         + f"; stopped without saving this epoch, {kept}. Lower the learning rate "
                           "(or check the data for NaN / inf) and start again")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`fit` after a Ctrl-C.

    Attributes:
        epoch (int): the epoch that was running (1-based).
        batch (int): batches of that epoch completed before stopping.
        checkpoints (list[str]): files written with the interrupted state (empty when the
            interrupt arrived in the middle of a step, where the state is not consistent: then
            resume from the last epoch-end checkpoint).
        history (History): the epochs completed so far.
    """

    def __init__(self, epoch: int, batch: int, checkpoints: list[str], history: History):
        self.epoch, self.batch, self.checkpoints, self.history = epoch, batch, checkpoints, history
        where = f"epoch {epoch}, after batch {batch}"
        saved = f"; saved {', '.join(checkpoints)}" if checkpoints else ""
        super().__init__(f"training interrupted at {where}{saved}")


def _is_classification(out: np.ndarray, y: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] > 1 and y.ndim == 1 and np.issubdtype(y.dtype, np.integer)


def _current_lr(optimizer) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


class _HardInterrupt(KeyboardInterrupt):
    """The second Ctrl-C: stop at once, write nothing."""


class _InterruptFlag:
    """SIGINT handler for the loop's lifetime: first Ctrl-C sets a flag (stop at the next batch
    boundary, where the state is consistent), a second one raises KeyboardInterrupt at once.
    Installed only in the main thread (signal handlers cannot be set elsewhere)."""

    def __init__(self, print_fn: Callable[[str], Any]):
        self.requested = False
        self._print = print_fn
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise _HardInterrupt
        self.requested = True
        self._print("\nInterrupt: stopping after this batch and saving a checkpoint "
                    "(press Ctrl-C again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class TrainingLoop:
    """The state of a running ``fit`` call; callbacks see it as ``self.loop``.

    Attributes:
        model, loss_fn, optimizer, scheduler, train_loader, val_loader, callbacks, history.
        epochs (int): the last epoch to run (1-based, inclusive).
        epoch (int): the epoch running now; batch (int): batches of it completed.
        stop_training (bool): set by a callback to end training after the current epoch.
        saved_checkpoints (list[str]): every file written through :meth:`save_checkpoint`.
    """

    def __init__(self, model, loss_fn, optimizer, train_loader, val_loader, epochs, scheduler,
                 scheduler_interval, callbacks, initial_epoch, verbose, print_fn):
        if scheduler_interval is None:
            scheduler_interval = "step" if type(scheduler).__name__ in _STEP_SCHEDULERS else "epoch"
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if scheduler_interval == "step" and _steps_with_metric(scheduler):
            raise ValueError(f"fit: {type(scheduler).__name__} steps once per epoch with the validation loss; "
                             "use scheduler_interval='epoch' (the default for it)")
        if int(epochs) < 0 or int(initial_epoch) < 0:
            raise ValueError(f"fit: epochs and initial_epoch must be >= 0, got {epochs} and {initial_epoch}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        self.callbacks: list[Callback] = list(callbacks)
        self.epochs, self.initial_epoch = int(epochs), int(initial_epoch)
        self.verbose, self.print = int(verbose), print_fn
        self.history = History()
        self.epoch, self.batch = self.initial_epoch, 0
        self.stop_training = False
        self.saved_checkpoints: list[str] = []
        self.last_checkpoint: str | None = None  # the newest checkpoint written or resumed from
        self._pending_saves: list[tuple[str, dict | None]] = []
        self._at_boundary = False  # True only between two batches, where a save is consistent
        self._reset_epoch_sums()
        # Where the running epoch started (RNG states) and, on resume, where it stopped.
        self._epoch_start: dict | None = None
        self._resume_mid_epoch: dict | None = None
        self.dist = None  # a cnnkit.distributed.DataParallel under mpiexec (set by its attach)
        self._interrupt = None

    # ------------------------------------------------------------------ checkpoints
    def _reset_epoch_sums(self) -> None:
        self._loss_sum, self._correct, self._seen, self._elapsed = 0.0, 0, 0, 0.0
        self._classification = None

    def train_state(self) -> dict:
        """Everything besides model / optimizer / scheduler that a resumed run needs (JSON-able)."""
        mid_epoch = self.batch > 0 and self._epoch_start is not None
        state = {
            "epoch": self.epoch - 1 if mid_epoch else self.epoch,   # completed epochs
            "batch": self.batch if mid_epoch else 0,
            "epochs": self.epochs,
            "rng": get_rng_state(),
            "loader_rng": rs.loader_rng_state(self.train_loader),
            "history": self.history.to_dict(),
            "callbacks": [{"type": type(cb).__name__, "state": cb.state_dict()} for cb in self.callbacks],
            "scheduler_interval": self.scheduler_interval,
        }
        if mid_epoch:
            state["epoch_start"] = self._epoch_start
            state["partial"] = {"loss_sum": self._loss_sum, "correct": self._correct, "seen": self._seen,
                                "elapsed": self._elapsed, "classification": self._classification}
        if self.dist is not None:
            state["distributed"] = self.dist.checkpoint_state()
        return state

    def request_checkpoint(self, path: str, meta: dict | None = None) -> None:
        """Ask for a checkpoint at the end of this epoch: it is written once every callback has
        seen the epoch's end, so it holds their final state (e.g. another callback's new best)."""
        self._pending_saves.append((str(path), meta))

    def save_checkpoint(self, path: str, meta: dict | None = None) -> str:
        """Write a resumable checkpoint (``cnnkit.save``) to ``path`` now; returns the path."""
        from ..io.checkpoint import save

        if self.dist is not None and not self.dist.is_root:  # only rank 0 writes files
            self.saved_checkpoints.append(str(path))
            return str(path)
        state = self.train_state()
        full_meta = {**(meta or {}), "epoch": state["epoch"], "train_state": state}
        save(self.model, path, optimizer=self.optimizer, scheduler=self.scheduler, meta=full_meta)
        self.saved_checkpoints.append(str(path))
        self.last_checkpoint = str(path)
        return str(path)

    def restore(self, checkpoint) -> None:
        """Load a checkpoint written by :meth:`save_checkpoint` (a path or a loaded Checkpoint)."""
        from ..io.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint) if not hasattr(checkpoint, "state_dict") else checkpoint
        state = (ckpt.meta or {}).get("train_state")
        if state is not None:
            rs.check_train_state(state, str(checkpoint), self.train_loader)
        if state is None:
            raise ValueError(
                f"fit(resume=...): {checkpoint} has no training state (meta['train_state']); "
                "it was not written by fit's ModelCheckpoint, so it can initialise weights "
                "(model.load_state_dict) but cannot resume a run"
            )
        if self.dist is not None:
            state = self.dist.restore_state(state)  # this rank's generator states
        self.model.load_state_dict(ckpt.state_dict)
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        if self.scheduler is not None:
            if ckpt.scheduler_state is None:
                raise ValueError(f"fit(resume=...): {checkpoint} holds no scheduler state, but a scheduler was given")
            self.scheduler.load_state_dict(ckpt.scheduler_state)
        saved_cbs = state.get("callbacks", [])
        for cb, saved in zip(self.callbacks, saved_cbs):
            if saved.get("type") == type(cb).__name__:
                cb.load_state_dict(saved.get("state") or {})
        self.history = History.from_dict(state.get("history"))
        self.initial_epoch = self.epoch = int(state["epoch"])
        self.scheduler_interval = state.get("scheduler_interval", self.scheduler_interval)
        rs.restore_rng(set_rng_state, state["rng"], str(checkpoint))
        if not hasattr(checkpoint, "state_dict"):
            self.last_checkpoint = str(checkpoint)
        if int(state.get("batch", 0)) > 0:
            self._resume_mid_epoch = state
        else:
            rs.set_loader_rng_state(self.train_loader, state.get("loader_rng"))

    # ------------------------------------------------------------------ running
    def _batches(self) -> Iterable:
        """The epoch's batches; on a mid-epoch resume, replay the shuffling and skip the batches
        already trained on, then put the global RNG where the interrupted run left it."""
        resume, self._resume_mid_epoch = self._resume_mid_epoch, None
        if resume is None:
            self._epoch_start = {"rng": get_rng_state(), "loader_rng": rs.loader_rng_state(self.train_loader)}
            return iter(self.train_loader)
        start = resume["epoch_start"]
        self._epoch_start = start
        set_rng_state(start["rng"])
        rs.set_loader_rng_state(self.train_loader, start["loader_rng"])
        it = iter(self.train_loader)
        for _ in range(int(resume["batch"])):
            next(it)
        set_rng_state(resume["rng"])
        partial = resume["partial"]
        self.batch = int(resume["batch"])
        self._loss_sum, self._correct = float(partial["loss_sum"]), int(partial["correct"])
        self._seen, self._elapsed = int(partial["seen"]), float(partial["elapsed"])
        self._classification = partial.get("classification")
        return it

    def _train_step(self, x, y) -> tuple[float, int | None]:
        model, optimizer = self.model, self.optimizer
        x, y = as_tensor(x), as_tensor(y)
        optimizer.zero_grad()
        out = model(x)
        loss_t = self.loss_fn(out, y)
        loss = float(loss_t.item())
        loss_t.backward()
        out, y = out.data, y.data
        if self.dist is not None:  # data-parallel: average the gradients over ranks
            loss = self.dist.average_gradients(self, out, y, loss)
        optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        if self._classification is None:
            self._classification = _is_classification(out, y)
        correct = int(np.count_nonzero(out.argmax(axis=1) == y)) if self._classification else None
        if self.dist is not None:
            correct = self.dist.step_correct
        return loss, correct

    def _run_epoch(self, epoch: int, interrupt: _InterruptFlag) -> dict:
        self.epoch = epoch
        if self._resume_mid_epoch is None:
            self.batch = 0
            self._reset_epoch_sums()
        batches = self._batches()
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, {})
        self.model.train()
        total = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        show_bar = None if self.verbose == 1 else False  # None: only when stderr is a terminal
        lr = _current_lr(self.optimizer)
        with EpochProgress(epoch, self.epochs, total, enabled=show_bar, initial=self.batch) as bar:
            t0 = time.perf_counter() - self._elapsed
            for x, y in batches:
                lr = _current_lr(self.optimizer)
                if len(x) == 0:  # no kernel is asked to average over nothing
                    raise ValueError(f"fit: train_loader yielded an empty batch (epoch {epoch}, batch "
                                     f"{self.batch + 1}); every batch needs at least one sample")
                for cb in self.callbacks:
                    cb.on_train_batch_begin(self.batch + 1, {"size": len(x)})
                loss, correct = self._train_step(x, y)
                if not math.isfinite(loss):
                    raise TrainingDiverged(epoch, self.batch + 1, f"the loss is {loss}", lr, self.last_checkpoint)
                n = len(x) if self.dist is None else self.dist.step_size
                self.batch += 1
                self._loss_sum += loss * n
                self._seen += n
                if correct is not None:
                    self._correct += correct
                self._elapsed = time.perf_counter() - t0
                self._at_boundary = True
                batch_logs = {"loss": loss, "size": n}
                if correct is not None:
                    batch_logs["accuracy"] = correct / n
                for cb in self.callbacks:
                    cb.on_train_batch_end(self.batch, batch_logs)
                bar.update(self._loss_sum / self._seen,
                           self._correct / self._seen if self._classification else None,
                           self._seen / max(self._elapsed, 1e-9))
                if interrupt.requested if self.dist is None else self.dist.stop:
                    raise KeyboardInterrupt
                self._at_boundary = False
        if self._seen == 0:
            raise ValueError("fit: train_loader yielded no batches (empty dataset, or drop_last with "
                             "fewer samples than one batch)")
        logs: dict[str, Any] = {"loss": self._loss_sum / self._seen}
        if self._classification:
            logs["accuracy"] = self._correct / self._seen
        if self.val_loader is not None:
            for cb in self.callbacks:
                cb.on_test_begin({})
            if self.dist is None:
                val = evaluate(self.model, self.val_loader, self.loss_fn, details=False,
                               progress="validation" if self.verbose == 1 else None, callbacks=self.callbacks)
            else:
                val = self.dist.evaluate(self.model, self.val_loader, self.loss_fn)
            logs["val_loss"] = val["loss"]
            if "accuracy" in val:
                logs["val_accuracy"] = val["accuracy"]
            for cb in self.callbacks:
                cb.on_test_end({k: v for k, v in logs.items() if k.startswith("val_")})
        self._check_finite(epoch, logs, lr)
        logs["lr"] = lr
        logs["time"] = self._elapsed
        logs["images_per_sec"] = self._seen / max(self._elapsed, 1e-9)
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            if _steps_with_metric(self.scheduler):
                self.scheduler.step(logs.get("val_loss", logs["loss"]))
            else:
                self.scheduler.step()
        self.batch = 0
        self._epoch_start = None
        self.history.append(epoch, logs)
        if self.verbose:
            self.print(format_epoch_line(epoch, self.epochs, logs))
        # The epoch's checkpoints are written once every callback has seen its end, those of
        # save-best-only callbacks first: every other checkpoint records the best epoch so far
        # (in the callbacks' state), so a kill between two writes can leave a best file newer
        # than "last" -- which the resumed run rewrites identically -- but never a "last" that
        # names a best epoch whose file is not on disk yet.
        first: list[tuple[str, dict | None]] = []
        rest: list[tuple[str, dict | None]] = []
        if self.dist is not None:
            self.dist.before_checkpoints(self)
        for cb in self.callbacks:
            self._pending_saves = []
            cb.on_epoch_end(epoch, logs)
            (first if getattr(cb, "save_best_only", False) else rest).extend(self._pending_saves)
        self._pending_saves = []
        for path, meta in first + rest:
            self.save_checkpoint(path, meta)
        return logs

    def _check_finite(self, epoch: int, logs: dict, lr: float | None) -> None:
        """Stop before anything of a diverged epoch is saved: a non-finite validation loss or
        weight (the training loss is checked after every batch)."""
        for key in ("loss", "val_loss"):
            if key in logs and not math.isfinite(logs[key]):
                raise TrainingDiverged(epoch, 0, f"{key} is {logs[key]}", lr, self.last_checkpoint)
        for name, p in self.model.named_parameters():
            if not np.isfinite(p.data).all():
                raise TrainingDiverged(epoch, 0, f"weight {name} holds NaN or inf", lr, self.last_checkpoint)

    def run(self) -> History:
        model = self.model
        old_flag = getattr(model, "needs_input_grad", True)
        # Nobody needs the gradient w.r.t. the images: the first layer may skip computing it.
        model.needs_input_grad = False
        warn_about_unused_hooks(self.callbacks)
        for cb in self.callbacks:
            cb.set_loop(self)
        try:
            with _InterruptFlag(self.print) as interrupt:
                self._interrupt = interrupt
                for cb in self.callbacks:
                    cb.on_train_begin({})
                try:
                    for epoch in range(self.initial_epoch + 1, self.epochs + 1):
                        self._run_epoch(epoch, interrupt)
                        if self.stop_training:
                            break
                except KeyboardInterrupt as exc:
                    self._on_interrupt(save=not isinstance(exc, _HardInterrupt))
            for cb in self.callbacks:
                cb.on_train_end({"history": self.history})
        finally:
            model.needs_input_grad = old_flag
        return self.history

    def _on_interrupt(self, save: bool) -> None:
        # Saving is only safe between two batches; inside a step the model, optimizer and RNG
        # may be half-updated, and the last epoch-end checkpoint stays the one to resume from.
        before = len(self.saved_checkpoints)
        if save and self._at_boundary:
            if self.dist is not None:
                self.dist.before_checkpoints(self)
            logs = {"loss": self._loss_sum / max(self._seen, 1)}
            for cb in self.callbacks:
                cb.on_interrupt(self.epoch, logs)
        raise TrainingInterrupted(self.epoch, self.batch, self.saved_checkpoints[before:], self.history)


def fit(model, loss_fn, optimizer, train_loader, val_loader=None, epochs: int = 1, scheduler=None,
        callbacks: Iterable[Callback] = (), initial_epoch: int = 0, verbose: int = 1,
        scheduler_interval: str | None = None, resume=None,
        print_fn: Callable[[str], Any] = print) -> History:
    """Train ``model`` for ``epochs`` epochs.

    Args:
        model: a ``cnnkit.nn.Module`` producing logits (classification) or predictions.
        loss_fn: a loss module or function of Tensors (``loss = loss_fn(out, y)``, then ``loss.backward()``).
        optimizer: a ``cnnkit.optim`` optimizer over ``model.parameters()``.
        train_loader: iterable of ``(x, y)`` batches with ``len()`` (a ``cnnkit.data.DataLoader``).
        val_loader: optional; adds ``val_loss`` / ``val_accuracy`` after every epoch.
        epochs: index of the last epoch (Keras semantics: with ``initial_epoch=2, epochs=5``
            epochs 3, 4 and 5 run).
        scheduler: optional LR scheduler. ``ReduceLROnPlateau`` is stepped once per epoch with
            the epoch's ``val_loss`` (its ``loss`` when there is no ``val_loader``).
        scheduler_interval: ``'step'`` (after every batch) or ``'epoch'``; None picks 'step'
            for OneCycleLR / CyclicLR and 'epoch' for the others.
        callbacks: :class:`Callback` instances (ModelCheckpoint, EarlyStopping, CSVLogger...).
        initial_epoch: epochs already done (ignored when ``resume`` is given).
        verbose: 0 silent; 1 a live progress bar (only when stderr is a terminal) plus one
            summary line per epoch; 2 the summary lines only.
        resume: a checkpoint path (or loaded ``Checkpoint``) written by ``ModelCheckpoint``
            during an earlier call with the same arguments: restores model, optimizer,
            scheduler, epoch, position inside the epoch, history, callback state and every RNG.
        print_fn: where summary lines go.

    Returns:
        A :class:`History`: ``history.history['loss' | 'accuracy' | 'val_loss' |
        'val_accuracy' | 'lr' | 'time' | 'images_per_sec']`` (accuracy only for classification:
        2-D outputs with integer labels).

    Raises:
        TrainingInterrupted: after Ctrl-C, once the checkpoints are written.
    """
    from ..distributed import DataParallel

    loop = TrainingLoop(model, loss_fn, optimizer, train_loader, val_loader, epochs, scheduler,
                        scheduler_interval, callbacks, initial_epoch, verbose, print_fn)
    dist = DataParallel.for_fit()  # None unless started by mpiexec with several ranks
    if dist is None:
        if resume is not None:
            loop.restore(resume)
        return loop.run()
    loop.dist = dist
    if resume is not None:
        loop.restore(dist.share_checkpoint(resume))
    dist.attach(loop)
    return dist.run(loop)


def evaluate(model, loader, loss_fn=None, num_classes: int | None = None, details: bool = True,
             progress: str | None = None, callbacks: Iterable[Callback] = ()) -> dict:
    """Evaluate ``model`` on every batch of ``loader`` in eval mode (the mode is restored after).

    Args:
        model: the model.
        loader: iterable of ``(x, y)`` batches.
        loss_fn: optional loss; adds ``'loss'`` (the sample-weighted mean of batch losses).
        num_classes: size of the confusion matrix (default: the model's output width).
        details: add the confusion matrix and per-class precision / recall / F1.
        progress: a label (e.g. ``"test"``) to show a progress bar under, on stderr when it is
            a terminal; None: no bar.
        callbacks: their ``on_test_batch_begin`` / ``on_test_batch_end`` hooks are called for
            each batch (``fit`` passes its callbacks for the validation pass).

    Returns:
        dict with ``'num_samples'``, ``'loss'`` (if ``loss_fn``), and for classification
        ``'accuracy'``, plus when ``details``: ``'confusion_matrix'`` (ndarray, rows = true
        class, columns = predicted), ``'precision'``, ``'recall'``, ``'f1'``, ``'support'``
        (per-class lists) and ``'macro_precision'``, ``'macro_recall'``, ``'macro_f1'``.
    """
    from . import metrics

    was_training = model.training
    model.eval()
    loss_sum, seen = 0.0, 0
    preds, targets = [], []
    classification = None
    width = None
    callbacks = list(callbacks)
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = EvalProgress(progress or "", total, enabled=None if progress else False)
    try:
        for batch, (x, y) in enumerate(loader, 1):
            if len(x) == 0:  # nothing to count, and no kernel is asked to run on nothing
                continue
            for cb in callbacks:
                cb.on_test_batch_begin(batch, {"size": len(x)})
            x, y = as_tensor(x), as_tensor(y)
            n = len(x)
            batch_logs: dict[str, Any] = {"size": n}
            with no_grad():
                out = model(x)
                if loss_fn is not None:
                    batch_logs["loss"] = float(loss_fn(out, y))
                    loss_sum += batch_logs["loss"] * n
            out, y = out.data, y.data
            if classification is None:
                classification = _is_classification(out, y)
                width = out.shape[1] if out.ndim == 2 else None
            if classification:
                preds.append(out.argmax(axis=1))
                targets.append(np.asarray(y))
            seen += n
            for cb in callbacks:
                cb.on_test_batch_end(batch, batch_logs)
            bar.update()
    finally:
        bar.close()
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    result: dict[str, Any] = {"num_samples": seen}
    if loss_fn is not None:
        result["loss"] = loss_sum / seen
    if classification:
        p, t = np.concatenate(preds), np.concatenate(targets)
        result["accuracy"] = float(np.count_nonzero(p == t)) / seen
        if details:
            k = int(num_classes or max(width or 0, int(t.max()) + 1, int(p.max()) + 1))
            cm = metrics.confusion_matrix(p, t, k)
            result["confusion_matrix"] = cm
            result.update(_per_class(metrics, cm))
    return result


def _per_class(metrics, cm: np.ndarray) -> dict:
    """Per-class and macro precision / recall / F1 from a confusion matrix (``train.metrics``)."""
    prf = metrics.precision_recall_f1(cm)
    out = {}
    for key, kind in (("precision", float), ("recall", float), ("f1", float), ("support", int)):
        if key in prf:
            out[key] = [kind(v) for v in np.asarray(prf[key]).ravel()]
    for key in ("macro_precision", "macro_recall", "macro_f1"):
        if key in prf:
            out[key] = float(prf[key])
    return out
