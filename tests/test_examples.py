"""The learner-facing examples run and print sensible results.

Each example runs in a fresh interpreter (as a user would run it), in a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Run ``examples/<name>`` with ``args``; return its stdout (fail with its stderr)."""
    env = dict(os.environ, CNNKIT_DATA=str(cwd / "no-data-here"))  # never pick up a user's cache
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_custom_layer_example(tmp_path):
    out = run_example("custom_layer.py", cwd=tmp_path)
    # The two custom layers pass, alone and inside a Sequential with built-in layers.
    assert "gradcheck passed for Swish()" in out
    assert "gradcheck passed for ChannelScale(3)" in out
    assert "gradcheck passed for Sequential()" in out
    # Every parameter of the network was checked, the custom one included.
    for name in ("0.weight", "0.bias", "1.weight", "5.weight", "5.bias"):
        assert re.search(rf"^\s+{re.escape(name)}\s.*\bok$", out, re.M), f"{name} not checked:\n{out}"
    # The deliberately wrong backward is caught.
    assert "gradcheck FAILED for BuggySwish()" in out
    losses = re.search(r"loss (\d+\.\d+) -> (\d+\.\d+)", out)
    assert losses, out
    first, last = float(losses.group(1)), float(losses.group(2))
    assert last < 0.5 * first
    assert out.rstrip().endswith("all checks passed")


@pytest.mark.slow  # real data: about 5 s of CPU, more on a busy machine
@pytest.mark.skipif(not (FASHION / "train-labels-idx1-ubyte.gz").exists(),
                    reason=f"real Fashion-MNIST not installed in {FASHION} (apt-get install dataset-fashion-mnist)")
def test_train_fashion_mnist_example(tmp_path):
    ckpt = tmp_path / "lenet.safetensors"
    out = run_example("train_fashion_mnist.py", "--epochs", "1", "--limit", "1500", "--data", str(FASHION),
                      "--out", str(ckpt), cwd=tmp_path)
    found = re.search(r"test accuracy: (\d\.\d+) on (\d+) images", out)
    assert found, out
    accuracy, n_test = float(found.group(1)), int(found.group(2))
    assert n_test == 1500
    # Chance is 0.10; one epoch on 1350 images reaches well above that (about 0.6-0.7).
    assert accuracy > 0.45, out

    import cnnkit

    model = cnnkit.load(ckpt)  # rebuilt from the stored config, no user code
    assert model.config["name"] == "lenet"
    assert model.checkpoint_meta["classes"][0] == "T-shirt/top"
    assert model.checkpoint_meta["normalize"] == {"mean": [0.286], "std": [0.353]}
