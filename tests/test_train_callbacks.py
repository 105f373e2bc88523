"""ModelCheckpoint, EarlyStopping and CSVLogger: unit behaviour on scripted metric sequences,
plus real files from a short training run."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from cnnkit.io.checkpoint import load_checkpoint
from cnnkit.train import CSVLogger, EarlyStopping, History, ModelCheckpoint, fit

from train_helpers import tiny_model, tiny_setup


class _FakeLoop:
    """Stands in for the training loop: records save requests."""

    def __init__(self, model=None):
        self.model = model
        self.saved = []
        self.stop_training = False
        self.history = History()

    def request_checkpoint(self, path, meta=None):
        self.saved.append(str(path))


def _drive(cb, values, key="val_loss", loop=None):
    loop = loop or _FakeLoop()
    cb.set_loop(loop)
    for epoch, v in enumerate(values, start=1):
        cb.on_epoch_end(epoch, {key: v, "loss": 1.0})
        if loop.stop_training:
            break
    return loop


def test_checkpoint_every_n_epochs_formats_the_epoch(tmp_path):
    cb = ModelCheckpoint(tmp_path / "ep{epoch:02d}.safetensors", every_n_epochs=2)
    loop = _drive(cb, [5, 4, 3, 2, 1])
    assert loop.saved == [str(tmp_path / "ep02.safetensors"), str(tmp_path / "ep04.safetensors")]


@pytest.mark.parametrize("mode, values, saved_epochs, best", [
    ("min", [3.0, 2.0, 2.5, 1.0, 1.0], [1, 2, 4], 1.0),
    ("max", [0.5, 0.7, 0.6, 0.7, 0.9], [1, 2, 5], 0.9),
])
def test_checkpoint_best_only(tmp_path, mode, values, saved_epochs, best):
    cb = ModelCheckpoint(tmp_path / "best_{epoch}.safetensors", monitor="val_loss", mode=mode, save_best_only=True)
    loop = _drive(cb, values)
    assert loop.saved == [str(tmp_path / f"best_{e}.safetensors") for e in saved_epochs]
    assert cb.best == best and cb.best_epoch == saved_epochs[-1]


def test_checkpoint_auto_mode_maximises_accuracy():
    assert ModelCheckpoint("x.safetensors", monitor="val_accuracy").mode == "max"
    assert ModelCheckpoint("x.safetensors", monitor="val_loss").mode == "min"


def test_checkpoint_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="needs monitor"):
        ModelCheckpoint(tmp_path / "a.safetensors", save_best_only=True)
    with pytest.raises(ValueError, match="every_n_epochs"):
        ModelCheckpoint(tmp_path / "a.safetensors", every_n_epochs=0)
    with pytest.raises(ValueError, match="mode"):
        ModelCheckpoint(tmp_path / "a.safetensors", monitor="val_loss", mode="up")
    cb = ModelCheckpoint(tmp_path / "a.safetensors", monitor="val_accuracy", save_best_only=True)
    with pytest.raises(ValueError, match="val_accuracy.*not among.*val_loader"):
        _drive(cb, [1.0], key="loss")


@pytest.mark.parametrize("values, patience, min_delta, stopped", [
    ([1.0, 0.9, 0.95, 0.96, 0.97, 0.5], 3, 0.0, 5),   # 3 epochs without improvement after epoch 2
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 2, 0.0, None),   # always improving
    ([1.0, 0.99, 0.98, 0.97, 0.96], 2, 0.05, 3),      # improvements smaller than min_delta do not count
])
def test_early_stopping(values, patience, min_delta, stopped):
    cb = EarlyStopping(monitor="val_loss", patience=patience, min_delta=min_delta)
    loop = _drive(cb, values)
    assert cb.stopped_epoch == stopped
    assert loop.stop_training == (stopped is not None)


def test_early_stopping_restores_best_weights():
    model = tiny_model()
    cb = EarlyStopping(monitor="val_accuracy", patience=1, restore_best_weights=True)
    loop = _FakeLoop(model)
    cb.set_loop(loop)
    first = model.state_dict()
    cb.on_epoch_end(1, {"val_accuracy": 0.9})
    for p in model.parameters():
        p.data += 1.0
    cb.on_epoch_end(2, {"val_accuracy": 0.8})
    assert loop.stop_training
    cb.on_train_end()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, first[k])


def test_early_stopping_ends_a_real_fit():
    model, loss_fn, opt, _, train, val = tiny_setup(onecycle=False)
    # lr 0: the weights stay put; only BatchNorm's running statistics still drift, moving
    # val_loss by < 0.02 in total, which min_delta does not count as an improvement.
    opt.param_groups[0]["lr"] = 0.0
    stop = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.05)
    hist = fit(model, loss_fn, opt, train, val, epochs=10, callbacks=[stop], verbose=0)
    assert hist.epochs == [1, 2, 3] and stop.stopped_epoch == 3


def test_checkpoint_files_and_csv_from_a_real_fit(tmp_path):
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=3)
    best = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_accuracy", save_best_only=True,
                           meta={"classes": ["a", "b", "c"]})
    hist = fit(model, loss_fn, opt, train, val, epochs=3, scheduler=sched, verbose=0,
               callbacks=[ModelCheckpoint(tmp_path / "last.safetensors"), best,
                          CSVLogger(tmp_path / "history.csv")])
    last = load_checkpoint(tmp_path / "last.safetensors")
    assert last.meta["epoch"] == 3 and last.optimizer_state is not None and last.scheduler_state is not None
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(last.state_dict[k], v)
    b = load_checkpoint(tmp_path / "best.safetensors")
    assert b.meta["epoch"] == best.best_epoch and b.meta["classes"] == ["a", "b", "c"]
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_accuracy"]) for r in rows] == hist.history["val_accuracy"]
    assert [float(r["loss"]) for r in rows] == hist.history["loss"]
