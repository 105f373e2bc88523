"""Resuming is exact: an interrupted run, resumed, ends with bit-for-bit the weights of a run
that was never interrupted (model, optimizer, scheduler, epoch, loader shuffling, global RNG)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from cnnkit.io.checkpoint import load_checkpoint
from cnnkit.train import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, TrainingInterrupted, fit

from train_helpers import tiny_setup

EPOCHS = 4


class _Crash(Exception):
    """Stands for kill -9: the process dies, nothing after this point runs."""


class _CrashAtEpochStart(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Crash


class _CtrlCAtBatch(Callback):
    """Simulates Ctrl-C between two batches: raises KeyboardInterrupt, or sends a real SIGINT."""

    def __init__(self, epoch, batch, real_signal=False):
        self.epoch, self.batch, self.real_signal = epoch, batch, real_signal

    def on_batch_end(self, batch, logs=None):
        if self.loop.epoch == self.epoch and batch == self.batch:
            if self.real_signal:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt


def _straight(tmp_path):
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    hist = fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=0,
               callbacks=[ModelCheckpoint(tmp_path / "straight.safetensors")])
    return model, opt, sched, hist


def _assert_same_run(a, b):
    (model_a, opt_a, sched_a, hist_a), (model_b, opt_b, sched_b, hist_b) = a, b
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    assert list(sd_a) == list(sd_b)
    for k in sd_a:
        np.testing.assert_array_equal(sd_a[k], sd_b[k], err_msg=k)  # bit-exact
    oa, ob = opt_a.state_dict(), opt_b.state_dict()
    for i in oa["state"]:
        for name, v in oa["state"][i].items():
            np.testing.assert_array_equal(v, ob["state"][i][name], err_msg=f"optimizer {i}.{name}")
    assert sched_a.state_dict() == sched_b.state_dict()
    assert hist_a.epochs == hist_b.epochs
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert hist_a.history[key] == hist_b.history[key], key


def test_resume_after_kill_at_epoch_end_is_bit_exact(tmp_path):
    straight = _straight(tmp_path)
    last = tmp_path / "last.safetensors"
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    with pytest.raises(_Crash):
        fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=0,
            callbacks=[ModelCheckpoint(last), _CrashAtEpochStart(3)])
    assert load_checkpoint(last).meta["epoch"] == 2
    # A new process: everything rebuilt from scratch with the same seed, then resumed.
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    hist = fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=0,
               callbacks=[ModelCheckpoint(last)], resume=last)
    assert hist.epochs == [1, 2, 3, 4]  # the history came back with the checkpoint
    _assert_same_run(straight, (model, opt, sched, hist))
    # The final checkpoints are identical too.
    a, b = load_checkpoint(tmp_path / "straight.safetensors"), load_checkpoint(last)
    for k in a.state_dict:
        np.testing.assert_array_equal(a.state_dict[k], b.state_dict[k])


@pytest.mark.parametrize("real_signal", [False, True], ids=["KeyboardInterrupt", "SIGINT"])
def test_ctrl_c_mid_epoch_saves_and_resumes_bit_exact(tmp_path, real_signal):
    straight = _straight(tmp_path)
    last = tmp_path / "last.safetensors"
    lines = []
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    # Usually default_int_handler; SIG_IGN where the shell started pytest in the background.
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=1, print_fn=lines.append,
            callbacks=[ModelCheckpoint(last), _CtrlCAtBatch(3, 2, real_signal)])
    exc = info.value
    assert (exc.epoch, exc.batch) == (3, 2)
    assert exc.checkpoints == [str(last)]
    ckpt = load_checkpoint(last)
    assert ckpt.meta["epoch"] == 2 and ckpt.meta["train_state"]["batch"] == 2
    # SIGINT handling is undone after fit: the handler from before is back.
    assert signal.getsignal(signal.SIGINT) is handler_before
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    hist = fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=0,
               callbacks=[ModelCheckpoint(last)], resume=last)
    _assert_same_run(straight, (model, opt, sched, hist))


def test_interrupt_inside_a_step_saves_nothing_new(tmp_path):
    """A KeyboardInterrupt in the middle of a step (state inconsistent) must not overwrite the
    last good checkpoint."""
    last = tmp_path / "last.safetensors"
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    calls = {"n": 0}
    real_step = opt.step

    def step_then_interrupt():
        calls["n"] += 1
        if calls["n"] == len(train) + 2:  # second epoch, second batch, during the update
            raise KeyboardInterrupt
        real_step()

    opt.step = step_then_interrupt
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=0,
            callbacks=[ModelCheckpoint(last)])
    assert info.value.checkpoints == []
    assert load_checkpoint(last).meta["epoch"] == 1


def test_callback_state_and_csv_survive_a_resume(tmp_path):
    last = tmp_path / "last.safetensors"
    csv_path = tmp_path / "history.csv"
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    best = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True)
    stop = EarlyStopping(monitor="val_loss", patience=10)
    with pytest.raises(_Crash):
        fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=0,
            callbacks=[ModelCheckpoint(last), best, stop, CSVLogger(csv_path), _CrashAtEpochStart(3)])
    saved_best = best.best
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    best2 = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True)
    stop2 = EarlyStopping(monitor="val_loss", patience=10)
    fit(model, loss_fn, opt, train, val, epochs=2, scheduler=sched, verbose=0,
        callbacks=[ModelCheckpoint(last), best2, stop2, CSVLogger(csv_path)], resume=last)
    assert best2.best == saved_best and stop2.best == saved_best
    rows = csv_path.read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + epochs 1, 2: no duplicates


def test_resume_from_a_file_without_training_state_is_a_clear_error(tmp_path):
    import cnnkit

    model, loss_fn, opt, sched, train, val = tiny_setup()
    cnnkit.save(model, tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="no training state"):
        fit(model, loss_fn, opt, train, epochs=1, verbose=0, resume=tmp_path / "weights.safetensors")


def test_second_ctrl_c_aborts_without_saving(tmp_path):
    class TwoSigints(Callback):
        def on_batch_end(self, batch, logs=None):
            if self.loop.epoch == 2 and batch == 1:
                os.kill(os.getpid(), signal.SIGINT)  # sets the flag
                os.kill(os.getpid(), signal.SIGINT)  # aborts at once

    last = tmp_path / "last.safetensors"
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=EPOCHS)
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, loss_fn, opt, train, val, epochs=EPOCHS, scheduler=sched, verbose=0, print_fn=lambda s: None,
            callbacks=[ModelCheckpoint(last), TwoSigints()])
    assert info.value.checkpoints == []
    assert load_checkpoint(last).meta["epoch"] == 1
