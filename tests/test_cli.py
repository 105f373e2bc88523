"""The `cnnkit` command run in-process on tiny generated IDX files (CNNKIT_DATA points at them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit.cli import main
from cnnkit.io.checkpoint import load_checkpoint

from train_helpers import is_png, write_fake_mnist

RUN_FILES = ["best.safetensors", "confusion_matrix.png", "curves.png", "filters.png", "history.csv",
             "last.safetensors", "metrics.json", "predictions.png", "run.json"]


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    return tmp_path


def _train(out, *extra):
    return main(["train", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "2",
                 "--batch-size", "16", "--out", str(out), *extra])


def test_train_writes_everything_and_ends_with_the_test_accuracy(data_env, capsys):
    out = data_env / "run"
    assert _train(out) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("test accuracy: ")
    assert sum(line.startswith("epoch ") for line in printed) == 2
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    for png in out.glob("*.png"):
        assert is_png(png)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    assert f"{100 * metrics['test_accuracy']:.2f}%" in printed[-1]
    assert metrics["test_samples"] == 60
    assert set(metrics["per_class"]) == {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                         "Shirt", "Sneaker", "Bag", "Ankle boot"}
    confusion = np.asarray(metrics["confusion_matrix"])
    assert confusion.sum() == 60
    # The accuracy is the confusion matrix's diagonal share (the range check above alone
    # would pass any number in [0, 1]).
    assert metrics["test_accuracy"] == pytest.approx(np.trace(confusion) / 60)
    assert metrics["config"]["optimizer"] == "adam"  # lenet's preset
    ckpt = load_checkpoint(out / "best.safetensors")
    assert ckpt.config == {"name": "lenet", "kwargs": {"num_classes": 10, "in_channels": 1, "input_size": 28}}
    meta = ckpt.meta
    assert meta["classes"][0] == "T-shirt/top" and meta["input_shape"] == [1, 28, 28]
    assert meta["normalize"] == {"mean": [0.286], "std": [0.353]} and meta["dataset"] == "fashion-mnist"
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy,lr") and len(rows) == 3


def test_same_seed_same_result_and_resume_after_a_crash(data_env, monkeypatch):
    straight, crashed = data_env / "a", data_env / "b"
    assert _train(straight, "--augment", "--scheduler", "onecycle") == 0

    # "kill -9" when the second epoch starts: nothing else of the run happens.
    from cnnkit.train import callbacks

    def die(self, epoch, logs=None):
        if epoch == 2:
            raise SystemExit("killed")

    monkeypatch.setattr(callbacks.CSVLogger, "on_epoch_begin", die, raising=False)
    with pytest.raises(SystemExit):
        _train(crashed, "--augment", "--scheduler", "onecycle")
    monkeypatch.setattr(callbacks.CSVLogger, "on_epoch_begin", callbacks.Callback.on_epoch_begin)
    assert load_checkpoint(crashed / "last.safetensors").meta["epoch"] == 1
    assert main(["train", "--out", str(crashed), "--resume"]) == 0
    a = load_checkpoint(straight / "last.safetensors").state_dict
    b = load_checkpoint(crashed / "last.safetensors").state_dict
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((crashed / "metrics.json").read_text())
    assert ma["test_accuracy"] == mb["test_accuracy"] and ma["test_loss"] == mb["test_loss"]


def test_ctrl_c_prints_how_to_resume(data_env, monkeypatch, capsys):
    import os
    import signal

    from cnnkit.train import TrainingLoop

    real_step = TrainingLoop._train_step
    calls = {"n": 0}

    def step(self, x, y):
        result = real_step(self, x, y)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        return result

    monkeypatch.setattr(TrainingLoop, "_train_step", step)
    out = data_env / "run"
    assert _train(out) == 130
    text = capsys.readouterr().out
    assert f"Resume with: cnnkit train --out {out} --resume" in text
    ckpt = load_checkpoint(out / "last.safetensors")
    assert ckpt.meta["train_state"]["batch"] == 3
    monkeypatch.setattr(TrainingLoop, "_train_step", real_step)
    assert main(["train", "--out", str(out), "--resume"]) == 0


def test_resume_refuses_changed_settings(data_env, capsys):
    out = data_env / "run"
    assert _train(out, "--epochs", "1", "--limit-train", "50") == 0  # the later --epochs wins
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert "cannot resume with different settings: --lr 0.5 (the run has 0.003)" in capsys.readouterr().err
    # Repeating the run's own settings is fine (nothing left to train: it just re-tests).
    assert main(["train", "--out", str(out), "--resume", "--model", "lenet", "--limit-train", "50"]) == 0
    assert main(["train", "--out", str(data_env / "nothing"), "--resume"]) == 2


def test_evaluate_summary_datasets(data_env, capsys):
    out = data_env / "run"
    assert _train(out, "--epochs", "1") == 0
    acc_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Ankle boot" in text and "accuracy" in text
    # Same weights (best checkpoint), same data: the same accuracy as the training run printed.
    pct = acc_line.split()[2]
    assert pct in text.strip().splitlines()[-1]
    assert main(["evaluate", str(out / "last.safetensors"), "--dataset", "fashion-mnist"]) == 0
    capsys.readouterr()

    assert main(["summary", "fashion_cnn"]) == 0
    text = capsys.readouterr().out
    assert "Total params" in text and "(1, 10)" in text
    assert main(["summary", "lenet", "--input-shape", "3,32,32", "--num-classes", "5"]) == 0
    assert "(1, 5)" in capsys.readouterr().out

    assert main(["datasets"]) == 0
    text = capsys.readouterr().out
    assert "fashion-mnist" in text and str(data_env / "data") in text


def test_unknown_names_list_the_valid_ones(data_env, capsys):
    assert main(["train", "--model", "nope", "--dataset", "fashion-mnist", "--out", str(data_env / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "lenet" in err and "fashion_cnn" in err
    assert main(["train", "--model", "lenet", "--dataset", "imagenet", "--out", str(data_env / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "fashion-mnist, mnist, cifar10" in err
    assert main(["summary", "nope"]) == 2
    assert "available models" in capsys.readouterr().err
    assert main(["evaluate", str(data_env / "missing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main([]) == 2


def test_presets_fill_what_is_not_given():
    from cnnkit.runner import resolve_config

    cfg = resolve_config({"model": "fashion_cnn", "dataset": "Fashion_MNIST", "lr": 0.05})
    assert cfg["dataset"] == "fashion-mnist"  # aliases and case are accepted
    assert (cfg["epochs"], cfg["batch_size"], cfg["optimizer"], cfg["scheduler"], cfg["augment"]) == \
        (10, 128, "sgd", "onecycle", True)
    assert cfg["lr"] == 0.05 and cfg["seed"] == 0
    cfg = resolve_config({"model": "lenet", "dataset": "mnist"})
    assert (cfg["optimizer"], cfg["lr"], cfg["epochs"]) == ("adam", 3e-3, 5)
    with pytest.raises(ValueError, match=r"--val-fraction must be in \[0, 1\)"):
        resolve_config({"model": "lenet", "dataset": "mnist", "val_fraction": 1.0})


def test_output_cut_short_by_a_closed_pipe_is_not_an_error():
    """`cnnkit datasets | head -1`: the reader leaving early must not print an error."""
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m cnnkit.cli datasets | head -c 1",
        shell=True, capture_output=True, text=True, timeout=120,
    )
    assert proc.stdout != ""
    assert "error" not in proc.stderr.lower()
