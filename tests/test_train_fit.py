"""fit / evaluate on tiny generated data: learning happens, history, scheduling, progress output."""

from __future__ import annotations

import math

import numpy as np
import pytest

import cnnkit
from cnnkit import nn, optim
from cnnkit.data import ArrayDataset, DataLoader
from cnnkit.train import Callback, History, evaluate, fit
from cnnkit.train.progress import EpochProgress, format_epoch_line

from train_helpers import pattern_images, tiny_model, tiny_setup


def test_fit_learns_and_records_history():
    model, loss_fn, opt, sched, train, val = tiny_setup(epochs=5)
    lines = []
    hist = fit(model, loss_fn, opt, train, val, epochs=5, scheduler=sched, print_fn=lines.append)
    assert isinstance(hist, History)
    assert hist.epochs == [1, 2, 3, 4, 5]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time", "images_per_sec"):
        assert len(hist.history[key]) == 5, key
    assert hist.history["loss"][-1] < 0.6 * hist.history["loss"][0]
    assert hist.history["val_accuracy"][-1] > 0.9
    # One summary line per epoch, with every metric.
    assert len(lines) == 5
    assert lines[0].startswith("epoch 1/5") and "val_acc" in lines[0] and "img/s" in lines[0]


def test_history_values_match_an_independent_evaluation():
    model, loss_fn, opt, _, train, val = tiny_setup()
    hist = fit(model, loss_fn, opt, train, val, epochs=2, verbose=0)
    model.eval()
    x, y = pattern_images(48, seed=1)
    out = model(x)
    expected_acc = float(np.mean(out.argmax(1) == y))
    assert hist.history["val_accuracy"][-1] == pytest.approx(expected_acc)
    assert hist.history["val_loss"][-1] == pytest.approx(nn.CrossEntropyLoss()(out, y), rel=1e-5)


def test_evaluate_gives_confusion_matrix_and_per_class_metrics():
    cnnkit.manual_seed(0)
    model = tiny_model()
    x, y = pattern_images(50, seed=3)
    model.train()
    res = evaluate(model, DataLoader(ArrayDataset(x, y), batch_size=16), nn.CrossEntropyLoss())
    assert model.training  # mode restored
    model.eval()
    pred = model(x).argmax(1)
    cm = np.zeros((3, 3), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    np.testing.assert_array_equal(res["confusion_matrix"], cm)
    assert res["num_samples"] == 50
    assert res["accuracy"] == pytest.approx(np.mean(pred == y))
    for c in range(3):
        tp = cm[c, c]
        prec = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        rec = tp / cm[c].sum() if cm[c].sum() else 0.0
        assert res["precision"][c] == pytest.approx(prec)
        assert res["recall"][c] == pytest.approx(rec)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        assert res["f1"][c] == pytest.approx(f1)
        assert res["support"][c] == cm[c].sum()


def test_regression_with_mse_has_no_accuracy():
    cnnkit.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 6, 6)).astype(np.float32)
    y = x.mean(axis=(1, 2, 3))[:, None].astype(np.float32) * 3

    class Pairs:  # a loader of float targets
        def __init__(self, bs):
            self.bs = bs

        def __len__(self):
            return math.ceil(len(x) / self.bs)

        def __iter__(self):
            for i in range(0, len(x), self.bs):
                yield x[i:i + self.bs], y[i:i + self.bs]

    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 1))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hist = fit(model, nn.MSELoss(), opt, Pairs(16), Pairs(32), epochs=15, verbose=0)
    assert "accuracy" not in hist.history and "val_accuracy" not in hist.history
    assert hist.history["loss"][-1] < 0.1 * hist.history["loss"][0]
    res = evaluate(model, Pairs(32), nn.MSELoss())
    assert set(res) == {"num_samples", "loss"}


class _Recorder(Callback):
    def __init__(self):
        self.events = []
        self.flags = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_batch_end(self, batch, logs=None):
        self.events.append(f"batch {batch}")
        self.flags.append(self.loop.model.needs_input_grad)

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch}")

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def test_callback_hooks_order_and_input_grad_skipped_while_training():
    model, loss_fn, opt, _, train, _ = tiny_setup(n=32)
    rec = _Recorder()
    fit(model, loss_fn, opt, train, epochs=2, callbacks=[rec], verbose=0)
    assert rec.events == ["train_begin", "epoch_begin 1", "batch 1", "batch 2", "epoch_end 1",
                          "epoch_begin 2", "batch 1", "batch 2", "epoch_end 2", "train_end"]
    assert rec.flags == [False] * 4
    assert model.needs_input_grad  # restored after training


def test_initial_epoch_uses_keras_semantics():
    model, loss_fn, opt, _, train, _ = tiny_setup(n=32)
    hist = fit(model, loss_fn, opt, train, epochs=3, initial_epoch=1, verbose=0)
    assert hist.epochs == [2, 3]


def test_onecycle_steps_per_batch_and_steplr_per_epoch():
    model, loss_fn, opt, sched, train, _ = tiny_setup(epochs=2)
    fit(model, loss_fn, opt, train, epochs=2, scheduler=sched, verbose=0)
    assert sched.last_epoch == 2 * len(train)  # stepped after every batch

    model, loss_fn, opt, _, train, _ = tiny_setup(onecycle=False)
    step = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    hist = fit(model, loss_fn, opt, train, epochs=3, scheduler=step, verbose=0)
    assert hist.history["lr"] == pytest.approx([1e-2, 5e-3, 2.5e-3])

    model, loss_fn, opt, _, train, _ = tiny_setup(onecycle=False)
    step = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    fit(model, loss_fn, opt, train, epochs=1, scheduler=step, scheduler_interval="step", verbose=0)
    assert step.last_epoch == len(train)


def test_bad_arguments_are_clear_errors():
    model, loss_fn, opt, _, train, _ = tiny_setup(n=32)
    with pytest.raises(ValueError, match="scheduler_interval"):
        fit(model, loss_fn, opt, train, epochs=1, scheduler_interval="batch")
    empty = DataLoader(ArrayDataset(*pattern_images(3)), batch_size=8, drop_last=True)
    with pytest.raises(ValueError, match="no batches"):
        fit(model, loss_fn, opt, empty, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, empty)


def test_progress_bar_is_off_when_stderr_is_not_a_terminal(capsys):
    model, loss_fn, opt, _, train, _ = tiny_setup(n=32)
    fit(model, loss_fn, opt, train, epochs=2, verbose=1)
    captured = capsys.readouterr()
    assert captured.err == ""  # no bar into a pipe / log file
    assert len(captured.out.strip().splitlines()) == 2  # one summary line per epoch
    assert EpochProgress(1, 1, 10).enabled is False


def test_progress_bar_draws_when_forced():
    import io

    buf = io.StringIO()
    with EpochProgress(1, 3, 4, enabled=True, file=buf) as bar:
        for _ in range(4):
            bar.update(0.5, 0.75, 1000.0)
    assert "epoch 1/3" in buf.getvalue()


def test_epoch_line_leaves_out_missing_metrics():
    line = format_epoch_line(2, 10, {"loss": 0.25, "lr": 0.1, "time": 1.5, "images_per_sec": 100})
    assert line == "epoch  2/10  loss 0.2500  lr 1.00e-01  1.5s  100 img/s"


def test_history_pads_missing_metrics_with_nan_and_round_trips():
    h = History()
    h.append(1, {"loss": 1.0})
    h.append(2, {"loss": 0.5, "val_loss": 0.7, "note": "text is ignored"})
    assert h.history["loss"] == [1.0, 0.5]
    assert math.isnan(h.history["val_loss"][0]) and h.history["val_loss"][1] == 0.7
    assert "note" not in h.history
    h2 = History.from_dict(h.to_dict())
    assert h2.epochs == [1, 2] and h2.history["loss"] == [1.0, 0.5]
    assert h.last("val_loss") == 0.7 and h.last("missing") is None
