"""Runs that must not lose data or hide a failure: an occupied --out folder, arguments
checked before anything is written, the order of the end-of-epoch checkpoints, NaN stopping
the run, tampered resume state, and refusals that are one line naming the argument."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from cnnkit.cli import main
from cnnkit.io import CheckpointError, load_checkpoint, save
from cnnkit.train import CSVLogger, ModelCheckpoint, TrainingDiverged, TrainingLoop, fit
from cnnkit.train.callbacks import Callback, write_history_csv
from cnnkit.train.history import History
from cnnkit.train.progress import format_epoch_line
from train_helpers import tiny_setup, write_fake_mnist


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "data" / "fashion-mnist", n_train=60, n_test=20)
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    return tmp_path


def _train(out, *extra):
    return main(["train", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1",
                 "--batch-size", "20", "--out", str(out), "--quiet", *extra])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- the run folder
def test_a_folder_holding_a_run_is_refused_untouched(data_env, capsys):
    out = data_env / "run"
    assert _train(out) == 0
    before = _snapshot(out)
    assert _train(out, "--seed", "1") == 2
    err = _one_error_line(capsys)
    assert f"--out {out} already holds a run (run.json, last.safetensors" in err
    assert "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before


def test_overwrite_replaces_the_run(data_env, capsys):
    out = data_env / "run"
    assert _train(out) == 0
    (out / "last.safetensors").write_bytes(b"old run")  # must not survive
    assert _train(out, "--seed", "1", "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["seed"] == 1
    assert load_checkpoint(out / "last.safetensors").meta["run"]["seed"] == 1
    assert _train(out, "--resume", "--overwrite") == 2
    assert "contradict" in _one_error_line(capsys)


def test_an_out_path_that_is_a_file(data_env, capsys):
    (data_env / "file").write_text("mine")
    assert _train(data_env / "file") == 2
    assert "is a file, expected a folder" in _one_error_line(capsys)
    assert (data_env / "file").read_text() == "mine"


@pytest.mark.parametrize("args, named", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 9223372036854775807], got -1"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--lr", "nan"], "--lr must be > 0, got nan"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1), got 1.5"),
    (["--momentum", "-0.5"], "--momentum must be in [0, 1), got -0.5"),
    (["--limit-train", "0"], "--limit-train must be an integer >= 1, got 0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
])
def test_bad_arguments_write_nothing(data_env, capsys, args, named):
    out = data_env / "new"
    assert _train(out, *args) == 2
    assert named in _one_error_line(capsys)
    assert not out.exists()


def test_missing_dataset_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    import cnnkit.data.locate as locate_mod

    monkeypatch.setattr(locate_mod, "SYSTEM_DIR", tmp_path / "system")
    out = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--dataset", "cifar-10", "--out", str(out), "--quiet"]) == 2
    capsys.readouterr()
    assert not out.exists()


def test_a_mistyped_resume_leaves_the_run_resumable(data_env, capsys):
    out = data_env / "run"
    assert _train(out, "--epochs", "2") == 0
    before = _snapshot(out)
    assert main(["train", "--out", str(out), "--resume", "--batch-size", "0"]) == 2
    _one_error_line(capsys)
    assert _snapshot(out) == before
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0


def test_a_tampered_run_json_is_refused_naming_it(data_env, capsys):
    out = data_env / "run"
    assert _train(out) == 0
    config = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**config, "batch_size": -4}))
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert f"{out / 'run.json'}: --batch-size must be an integer >= 1, got -4" in _one_error_line(capsys)
    (out / "run.json").write_text("[" * 100_000)
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "is not valid JSON" in _one_error_line(capsys)


def test_resume_cleans_leftover_temporary_files(data_env):
    out = data_env / "run"
    assert _train(out, "--epochs", "2") == 0
    stale = out / ".last.safetensors.00112233aabb.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert not stale.exists()


def test_the_final_lines_claim_only_files_that_exist(data_env, capsys):
    out = data_env / "run"
    import cnnkit.plots as plots
    import cnnkit.runner as runner

    orig, orig_w = runner._plot_predictions, plots.first_conv_weight
    try:
        # Two plots that cannot be drawn (no predictions plot, no first convolution).
        runner._plot_predictions = lambda *a, **k: None
        plots.first_conv_weight = lambda model: None
        assert main(["train", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1",
                     "--batch-size", "20", "--out", str(out)]) == 0
    finally:
        runner._plot_predictions, plots.first_conv_weight = orig, orig_w
    assert not (out / "filters.png").exists() and not (out / "predictions.png").exists()
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")][0]
    assert "filters.png" not in wrote and "predictions.png" not in wrote and "metrics.json" in wrote


# ---------------------------------------------------------------------------- checkpoint order
def test_best_is_written_before_last_in_every_epoch(tmp_path):
    model, loss, opt, sched, train, val = tiny_setup(epochs=3)
    last = ModelCheckpoint(tmp_path / "last.safetensors")
    best = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True)
    order: list[str] = []
    real = TrainingLoop.save_checkpoint

    def record(self, path, meta=None):
        order.append(os.path.basename(path))
        return real(self, path, meta)

    TrainingLoop.save_checkpoint = record
    try:
        fit(model, loss, opt, train, val, epochs=3, scheduler=sched, callbacks=[last, best], verbose=0)
    finally:
        TrainingLoop.save_checkpoint = real
    # Every epoch: best (when it improved) strictly before last.
    epochs = " ".join(order).split("last.safetensors")
    assert len(epochs) == 4 and all(e.strip() in ("", "best.safetensors") for e in epochs)
    assert "best.safetensors" in order
    recorded = load_checkpoint(tmp_path / "last.safetensors").meta["train_state"]["callbacks"][1]["state"]
    assert recorded["best_epoch"] == load_checkpoint(tmp_path / "best.safetensors").meta["epoch"]


# ---------------------------------------------------------------------------- NaN
class _PoisonAtEpoch(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            p = next(iter(self.loop.model.parameters()))
            p.data[...] = np.nan


def test_nan_loss_stops_the_run_keeping_the_last_good_checkpoint(tmp_path):
    model, loss, opt, sched, train, val = tiny_setup(epochs=3)
    cbs = [ModelCheckpoint(tmp_path / "last.safetensors"),
           ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True),
           CSVLogger(tmp_path / "history.csv"), _PoisonAtEpoch(2)]
    with pytest.raises(TrainingDiverged, match=rf"training diverged: the loss is nan at epoch 2, batch 1 "
                                               rf"\(lr [0-9.e-]+\); stopped without saving this epoch, the last good "
                                               rf"checkpoint is {tmp_path / 'last.safetensors'}") as info:
        fit(model, loss, opt, train, val, epochs=3, scheduler=sched, callbacks=cbs, verbose=0)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)  # the CLI prints one line
    for name in ("last.safetensors", "best.safetensors"):
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt.meta["epoch"] == 1
        assert all(np.isfinite(v).all() for v in ckpt.state_dict.values())
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 2  # header + epoch 1


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the validation pass meets the inf
def test_nan_weights_at_the_epoch_end_are_never_saved(tmp_path):
    model, loss, opt, sched, train, val = tiny_setup(epochs=2)

    class PoisonAfterLastBatch(Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == len(train):
                model[-1].bias.data[0] = np.inf

    with pytest.raises(TrainingDiverged, match=r"at the end of epoch 1.* no checkpoint was written"):
        fit(model, loss, opt, train, val, epochs=2, callbacks=[ModelCheckpoint(tmp_path / "last.safetensors"),
                                                               PoisonAfterLastBatch()], verbose=0)
    assert not (tmp_path / "last.safetensors").exists()


def test_nan_is_printed_not_hidden(tmp_path):
    line = format_epoch_line(3, 5, {"loss": math.nan, "accuracy": 0.5, "val_loss": math.inf})
    assert "loss nan" in line and "val_loss inf" in line
    h = History()
    h.append(1, {"loss": math.nan})
    write_history_csv(h, tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines()[1] == "1,nan"


# ---------------------------------------------------------------------------- tampered resume state
def _tampered(tmp_path, edit) -> str:
    model, loss, opt, sched, train, val = tiny_setup(epochs=2)
    fit(model, loss, opt, train, val, epochs=1, scheduler=sched,
        callbacks=[ModelCheckpoint(tmp_path / "good.safetensors")], verbose=0)
    ckpt = load_checkpoint(tmp_path / "good.safetensors")
    meta = ckpt.meta
    edit(meta["train_state"])
    save(ckpt.state_dict, tmp_path / "bad.safetensors", optimizer=ckpt.optimizer_state,
         scheduler=ckpt.scheduler_state, meta=meta)
    return str(tmp_path / "bad.safetensors")


def _mid_epoch(batch, **partial):
    def edit(state):
        state.update(batch=batch, epoch_start={"rng": state["rng"], "loader_rng": state["loader_rng"]},
                     partial={"loss_sum": 1.0, "correct": 3, "seen": 32, "elapsed": 0.1, "classification": True,
                              **partial})
    return edit


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.update(epoch=-3), r"'epoch' must be an integer >= 0, found -3"),
    (lambda s: s.update(epoch="1"), r"'epoch' must be an integer >= 0, found '1'"),
    (_mid_epoch(99), r"'batch' must be an integer in \[0, 6\) \(batches per epoch\), found 99"),
    (_mid_epoch(2, correct=-5988023), r"'partial.correct' must be an integer in \[0, 32\], found -5988023"),
    (_mid_epoch(2, seen=-1), r"'partial.seen' must be an integer >= 2"),
    (_mid_epoch(2, loss_sum=float("nan")), r"'partial.loss_sum' must be a finite number"),
    (lambda s: s["history"]["history"]["loss"].append(5.0), r"'history' must be epoch numbers"),
    (lambda s: s.update(rng={"bit_generator": "nope"}), r"'rng' must be a NumPy bit-generator state"),
])
def test_tampered_resume_state_is_refused(tmp_path, edit, expected):
    path = _tampered(tmp_path, edit)
    model, loss, opt, sched, train, val = tiny_setup(epochs=2)
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors: training state {expected}") as info:
        fit(model, loss, opt, train, val, epochs=2, scheduler=sched, resume=path, verbose=0)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- other refusals
def test_an_empty_batch_is_refused_before_any_kernel(tmp_path):
    model, loss, opt, sched, train, val = tiny_setup(epochs=1)
    x, y = next(iter(train))
    batches = [(x, y), (x[:0], y[:0])]
    with pytest.raises(ValueError, match=r"fit: train_loader yielded an empty batch \(epoch 1, batch 2\)"):
        fit(model, loss, opt, batches, epochs=1, verbose=0)


def test_predict_batch_size_and_normalize_are_named(tmp_path, capsys):
    from cnnkit import models
    from cnnkit.predict import predict

    net = models.create("lenet")
    img = np.zeros((28, 28), np.uint8)
    meta = {"input_shape": [1, 28, 28], "normalize": {"mean": [0.5], "std": [0.0]}}
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        predict(net, img, meta={"input_shape": [1, 28, 28]}, batch_size=0)
    with pytest.raises(ValueError, match=r"meta\['normalize'\] needs finite means and positive stds"):
        predict(net, img, meta=meta)
    save(net, tmp_path / "m.safetensors", meta=meta)
    assert main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "x.png")]) == 2
    assert "meta['normalize.std'] must be positive" in _one_error_line(capsys)


def test_summary_refuses_shapes_that_would_exhaust_memory(capsys):
    with pytest.raises(SystemExit) as info:
        main(["summary", "vgg16", "--input-shape", "3,100000,100000"])
    assert info.value.code == 2
    assert "--input-shape: the shape [3, 100000, 100000] is too large" in capsys.readouterr().err
    assert main(["summary", "lenet", "--input-shape", "1,2000,2000"]) == 2
    assert "--input-shape 1,2000,2000: summary runs one image through the model" in _one_error_line(capsys)
    assert main(["summary", "vgg16", "--num-classes", "1000000000"]) == 2
    assert "--num-classes must be in [1, 32768], got 1000000000" in _one_error_line(capsys)


def test_finetune_refuses_a_folder_holding_a_run(tmp_path):
    from cnnkit.finetune import finetune

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    with pytest.raises(ValueError, match=r"--out .* already holds a fine-tuning run \(report.json\); pass --overwrite"):
        finetune(tmp_path / "data", out)
    assert (out / "report.json").read_text() == "{}"
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        finetune(tmp_path / "data", tmp_path / "new", seed=-1)
    assert not (tmp_path / "new").exists()
