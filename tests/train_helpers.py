"""Tiny generated datasets and models shared by the training tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import cnnkit
from cnnkit import nn, optim
from cnnkit.data import ArrayDataset, DataLoader
from cnnkit.data.transforms import RandomHorizontalFlip


def pattern_images(n: int, classes: int = 3, size: int = 8, seed: int = 0, noise: float = 0.5):
    """``n`` images (N, 1, size, size) float32 = a pattern per class (the same for every
    ``seed``) + noise; int64 labels."""
    patterns = np.random.default_rng(1234).normal(size=(classes, 1, size, size)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int64)
    x = (patterns[y] + noise * rng.normal(size=(n, 1, size, size))).astype(np.float32)
    return x, y


def tiny_model(classes: int = 3, size: int = 8) -> nn.Sequential:
    """Conv + BatchNorm + Dropout: every kind of state a resume must restore."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * (size // 2) ** 2, classes),
    )


def tiny_setup(seed: int = 0, n: int = 96, batch_size: int = 16, epochs: int = 4, onecycle: bool = True):
    """Model, loss, optimizer, scheduler, shuffled + augmented train loader, val loader."""
    cnnkit.manual_seed(seed)
    x, y = pattern_images(n)
    ds = ArrayDataset(x, y)
    model = tiny_model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    train = DataLoader(ds, batch_size=batch_size, shuffle=True, seed=seed + 1,
                       transform=RandomHorizontalFlip())  # draws from the global RNG
    steps = epochs * len(train)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps) if onecycle else None
    val = DataLoader(ArrayDataset(*pattern_images(48, seed=1)), batch_size=32)
    return model, nn.CrossEntropyLoss(), opt, sched, train, val


def write_fake_mnist(folder: Path, n_train: int = 120, n_test: int = 60, seed: int = 0) -> Path:
    """Write learnable 28x28 IDX files with the official Fashion-MNIST names into ``folder``."""
    from cnnkit.data import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(10, 28, 28))
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = np.clip(patterns[y] * 0.7 + rng.integers(0, 77, size=(n, 28, 28)), 0, 255).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


def is_png(path: Path) -> bool:
    return Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
