"""The README's headline command, `cnnkit train --model fashion_cnn ...`, with its preset
(SGD + Nesterov, one-cycle schedule, augmentation, weight decay) run for a few batches on
tiny generated IDX files: the whole path a user's first run takes, end to end."""

from __future__ import annotations

import csv
import json
import math

from cnnkit.cli import main

from train_helpers import write_fake_mnist


def test_fashion_cnn_preset_runs_a_few_batches(tmp_path, monkeypatch, capsys):
    write_fake_mnist(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    out = tmp_path / "run"
    # Only the length is cut (2 epochs of 2 batches); every other setting is the preset's.
    assert main(["train", "--model", "fashion_cnn", "--dataset", "fashion-mnist", "--out", str(out),
                 "--epochs", "2", "--batch-size", "32", "--limit-train", "64", "--threads", "2",
                 "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert {k: config[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "scheduler", "augment")} == {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "scheduler": "onecycle",
        "augment": True}
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    # One-cycle: the learning rate rises towards the 0.1 peak, then anneals far below it.
    lrs = [float(r["lr"]) for r in rows]
    assert all(0 < lr <= 0.1 for lr in lrs) and lrs[-1] < 0.01
