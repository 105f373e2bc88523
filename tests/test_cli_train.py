"""`cnnkit train` as a new user meets it: a model that cannot take the dataset is refused at
once, a finished run is left alone by --resume, the epoch line's lr keeps one format, and the
validation and test passes show progress on a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import cnnkit
from cnnkit.cli import main
from cnnkit.models.registry import INPUT_SIZES
from cnnkit.runner import build_model

from cli_helpers import snapshot, train_tiny, write_light_on_dark


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    write_light_on_dark(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    return tmp_path


def test_a_model_that_needs_32x32_is_refused_before_anything_happens(data_env, capsys):
    out = data_env / "vgg"
    assert main(["train", "--model", "vgg_cifar", "--dataset", "fashion-mnist", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "vgg_cifar needs 32x32 inputs" in err and "fashion-mnist images are 1x28x28" in err
    assert "cifar10" in err  # the dataset that fits
    assert not out.exists()  # refused before the output folder (or anything else) was made


def _runs(model, size: int) -> bool:
    try:
        with cnnkit.no_grad():
            model(np.zeros((1, 3, size, size), np.float32))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(INPUT_SIZES))
def test_the_input_size_table_is_true(name):
    """Every stated requirement checked against the model itself: it runs at the size, and not
    one pixel below it (nor, for an exact size, far above it)."""
    kind, size = INPUT_SIZES[name]
    model = build_model(name, 10, [3, size, size])  # built once: the VGGs take seconds to initialise
    model.eval()
    assert _runs(model, size)
    assert not _runs(model, size - 1)
    if kind == "exact":
        assert not _runs(model, 2 * size)


def test_resuming_a_finished_run_says_so_and_changes_nothing(data_env, capsys):
    out = data_env / "run"
    assert train_tiny(out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "holds a complete run (1/1 epochs" in text and "no file changed" in text
    assert "epoch 1/1" not in text  # nothing trained or tested again
    assert snapshot(out) == before  # bytes and modification times


def test_the_epoch_line_prints_the_lr_in_one_format(data_env, capsys):
    out = data_env / "run"
    assert main(["train", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "3", "--batch-size", "16",
                 "--optimizer", "sgd", "--lr", "0.1", "--scheduler", "onecycle", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3
    lrs = [re.search(r"  lr (\S+)  ", line).group(1) for line in lines]
    assert all(re.fullmatch(r"\d\.\d\de[-+]\d\d", lr) for lr in lrs), lrs
    # The printed value is the lr of the epoch's last step, as recorded in the history.
    history = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    assert [float(v) for v in lrs] == [float(f"{v:.2e}") for v in history["lr"]]


def _read_all(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side of the terminal was closed
            return
        if not chunk:
            return
        sink.append(chunk)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_progress_bars_for_training_validation_and_test_on_a_terminal(data_env):
    """The command run as a user runs it, its stderr a terminal: the validation and the test
    passes draw a progress bar as the training epochs do."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # A terminal of 24 x 120 characters (a new pseudo-terminal has 0 columns: no room for a bar).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    code = ("import sys; from cnnkit.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1",
         "--batch-size", "16", "--out", str(data_env / "run")],
        stdout=subprocess.PIPE, stderr=slave, env={**os.environ}, timeout=600)
    os.close(slave)
    reader.join(timeout=60)
    os.close(master)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, terminal
    for label in ("epoch 1/1", "validation", "test"):  # tqdm's "<label>: 100%|####| 2/2 [...batch/s]"
        assert re.search(rf"{re.escape(label)}: +\d+%\|", terminal), label
    # stdout (a pipe) has the plain epoch line, no bar.
    assert "validation" not in proc.stdout.decode() and "\r" not in proc.stdout.decode()
