"""One short training run on REAL Fashion-MNIST through the `cnnkit train` command:
LeNet, 1 epoch on 10 000 training images, tested on 2 000 test images, must pass 75 %."""

from __future__ import annotations

import json

import pytest

from cnnkit.cli import main


@pytest.fixture
def real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    from cnnkit.data import DatasetNotFoundError, FashionMNIST

    try:
        FashionMNIST(train=False, download=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"real Fashion-MNIST files not found (e.g. apt-get install dataset-fashion-mnist): "
                    f"{str(exc).splitlines()[0]}")


def test_lenet_one_epoch_on_real_fashion_mnist(real_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "lenet"
    code = main(["train", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1",
                 "--limit-train", "10000", "--limit-test", "2000", "--val-fraction", "0",
                 "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_samples"] == 2000
    assert metrics["test_accuracy"] > 0.75, metrics["test_accuracy"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")
