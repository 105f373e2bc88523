"""PyTorch scripts run on cnnkit with only their imports changed: the two examples written
in the idiom of PyTorch's MNIST example and CIFAR-10 tutorial train, and their loss falls."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_mnist_style_script_trains(capsys):
    example = _load("pytorch_mnist_style")
    losses, accuracy = example.main(["--limit", "1280", "--epochs", "1", "--log-interval", "5"])
    out = capsys.readouterr().out
    assert "Train Epoch: 1 [0/1280 (0%)]" in out and "Test set: Average loss:" in out
    assert len(losses) == 20
    # The loss falls: the last batches' mean well below the first ones' (log(10) = 2.30 at start).
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3])
    assert accuracy > 0.5            # 10 classes: chance is 0.1


def test_cifar_tutorial_style_script_trains(capsys):
    example = _load("pytorch_cifar_tutorial_style")
    losses, accuracy = example.main(["--limit", "800", "--epochs", "2", "--print-every", "100"])
    out = capsys.readouterr().out
    assert "Finished Training" in out and "Accuracy for class:" in out
    assert np.mean(losses[-50:]) < 0.7 * np.mean(losses[:50])
    assert accuracy > 0.3
