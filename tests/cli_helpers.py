"""Helpers of the tests of the `cnnkit` command (tests/test_cli_*.py; not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnkit.cli import main

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


def write_light_on_dark(folder: Path, n_train: int = 200, n_test: int = 60, seed: int = 0) -> Path:
    """Learnable 28x28 IDX files (Fashion-MNIST's names) of light items on a black background,
    as Fashion-MNIST's: a bright pattern per class in the central 20x20, every border pixel 0."""
    from cnnkit.data import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = rng.integers(80, 256, size=(10, 20, 20))
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        x[:, 4:24, 4:24] = np.clip(patterns[y] * 0.8 + rng.integers(0, 50, size=(n, 20, 20)), 0, 255)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


def train_tiny(out: Path, *extra: str) -> int:
    """`cnnkit train` of LeNet for one epoch on the generated data (CNNKIT_DATA set by the test)."""
    return main(["train", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1",
                 "--batch-size", "16", "--out", str(out), *extra])


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}
