"""`fit` with ReduceLROnPlateau and with Keras-style callbacks; early stopping says why it stopped."""

from __future__ import annotations

import warnings

import pytest

from cnnkit import optim
from cnnkit.train import Callback, EarlyStopping, fit

from train_helpers import tiny_setup


class _RecordingPlateau(optim.lr_scheduler.ReduceLROnPlateau):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[float] = []

    def step(self, metrics=None):
        self.seen.append(metrics)
        super().step(metrics)


@pytest.mark.parametrize("with_validation", [True, False])
def test_reduce_lr_on_plateau_steps_with_the_monitored_loss(with_validation):
    model, loss_fn, opt, _, train, val = tiny_setup(onecycle=False)
    # patience 0 and a threshold no loss can beat: every epoch after the first is a plateau.
    sched = _RecordingPlateau(opt, factor=0.5, patience=0, threshold=10.0, threshold_mode="abs")
    history = fit(model, loss_fn, opt, train, val if with_validation else None, epochs=4, scheduler=sched,
                  verbose=0)
    monitored = "val_loss" if with_validation else "loss"
    assert sched.seen == history.history[monitored]
    start = opt.defaults["lr"]
    # The lr an epoch trained with: halved after each plateau epoch (exact: a power of two).
    assert history.history["lr"] == [start, start, start / 2, start / 4]
    with pytest.raises(ValueError, match="once per epoch"):
        fit(model, loss_fn, opt, train, epochs=1, scheduler=sched, scheduler_interval="step", verbose=0)


class _KerasStyle(Callback):
    """Written as for Keras: only Keras's hook names."""

    def __init__(self):
        self.calls: list[tuple[str, int | None]] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("train_batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        assert "loss" in logs
        self.calls.append(("train_batch_end", batch))

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin", None))

    def on_test_batch_begin(self, batch, logs=None):
        self.calls.append(("test_batch_begin", batch))

    def on_test_batch_end(self, batch, logs=None):
        assert "loss" in logs
        self.calls.append(("test_batch_end", batch))

    def on_test_end(self, logs=None):
        assert "val_loss" in logs
        self.calls.append(("test_end", None))


def test_keras_hook_names_are_called_in_order():
    model, loss_fn, opt, sched, train, val = tiny_setup()
    cb = _KerasStyle()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every hook it defines is one fit calls: no warning
        fit(model, loss_fn, opt, train, val, epochs=2, scheduler=sched, callbacks=[cb], verbose=0)
    n_train, n_val = len(train), len(val)
    expected = []
    for _ in range(2):
        for b in range(1, n_train + 1):
            expected += [("train_batch_begin", b), ("train_batch_end", b)]
        expected.append(("test_begin", None))
        for b in range(1, n_val + 1):
            expected += [("test_batch_begin", b), ("test_batch_end", b)]
        expected.append(("test_end", None))
    assert n_train > 1 and n_val > 1 and cb.calls == expected


def test_the_old_batch_hook_name_still_works():
    class Old(Callback):
        def __init__(self):
            self.n = 0

        def on_batch_end(self, batch, logs=None):
            self.n += 1

    model, loss_fn, opt, sched, train, val = tiny_setup()
    cb = Old()
    fit(model, loss_fn, opt, train, val, epochs=1, scheduler=sched, callbacks=[cb], verbose=0)
    assert cb.n == len(train)


def test_hooks_fit_never_calls_are_named_in_a_warning():
    class Predicting(Callback):
        def on_predict_batch_end(self, batch, logs=None): ...
        def on_epochs_end(self, epoch, logs=None): ...  # misspelt

    model, loss_fn, opt, sched, train, val = tiny_setup()
    with pytest.warns(UserWarning) as caught:
        fit(model, loss_fn, opt, train, val, epochs=1, scheduler=sched, callbacks=[Predicting()], verbose=0)
    texts = [str(w.message) for w in caught]
    assert any("Predicting.on_predict_batch_end" in t and "no predict phase" in t for t in texts)
    assert any("Predicting.on_epochs_end" in t and "not a hook" in t for t in texts)


def test_early_stopping_says_when_and_why_it_stops():
    model, loss_fn, opt, sched, train, val = tiny_setup(onecycle=False)
    lines: list[str] = []
    stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=100.0)  # nothing can improve by 100
    history = fit(model, loss_fn, opt, train, val, epochs=10, callbacks=[stopper], verbose=2,
                  print_fn=lines.append)
    assert len(history) == 2 and stopper.stopped_epoch == 2
    assert lines[-1] == (f"Early stopping after epoch 2: val_loss has not improved for 1 epoch "
                         f"(best {history.history['val_loss'][0]:.4g} at epoch 1)")
