"""Regression with a CNN: predict where an image's mass sits and how bright it is.

The target of each 28x28 image is three numbers: the centre of mass (row, column, in pixels)
and the mean brightness (in [0, 1]). A small CNN learns them with ``nn.MSELoss`` through the
same ``cnnkit.train.fit`` used for classification; ``fit`` notices the float targets and
reports only losses (no accuracy).

Data: real Fashion-MNIST images when they are found (``cnnkit datasets`` says where cnnkit
looks), else synthetic images of one Gaussian blob at a random place (``--synthetic`` forces
those).

Run::

    python examples/regression.py            # about 10 s on 2 CPU cores
    python examples/regression.py --synthetic --n-train 512 --epochs 1

It prints the mean absolute error of each target on held-out images next to the error of
always predicting the training mean, so you can see what the network learned.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import cnnkit
from cnnkit import nn, optim
from cnnkit.train import evaluate, fit

TARGETS = ("centre row (px)", "centre column (px)", "brightness")


def targets_of(images: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) images in [0, 1] -> (N, 3) float32: centre of mass row, column; mean."""
    h, w = images.shape[2:]
    mass = images.sum(axis=(1, 2, 3)) + 1e-6
    rows = (images.sum(axis=(1, 3)) * np.arange(h)).sum(axis=1) / mass
    cols = (images.sum(axis=(1, 2)) * np.arange(w)).sum(axis=1) / mass
    return np.stack([rows, cols, images.mean(axis=(1, 2, 3))], axis=1).astype(np.float32)


def synthetic_images(n: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """One Gaussian blob per image, random centre, width and brightness."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(6, size - 6, (2, n, 1, 1)).astype(np.float32)
    sigma = rng.uniform(1.5, 4.0, (n, 1, 1)).astype(np.float32)
    peak = rng.uniform(0.4, 1.0, (n, 1, 1)).astype(np.float32)
    blobs = peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return blobs[:, None].astype(np.float32)


def load_images(n_train: int, n_test: int, synthetic: bool, rng: np.random.Generator):
    if not synthetic:
        try:
            from cnnkit.data import FashionMNIST

            train, test = FashionMNIST(train=True, download=False), FashionMNIST(train=False, download=False)
            pick_train = rng.choice(len(train), n_train, replace=False)
            pick_test = rng.choice(len(test), n_test, replace=False)
            return train.get_batch(pick_train)[0], test.get_batch(pick_test)[0], "Fashion-MNIST"
        except (OSError, ValueError) as exc:  # not found / not readable: say so and go on
            print(f"Fashion-MNIST not available ({str(exc).splitlines()[0]}); using synthetic images")
    return synthetic_images(n_train, rng), synthetic_images(n_test, rng), "synthetic blobs"


class ArrayBatches:
    """(x, y) float batches from two arrays, reshuffled each pass by cnnkit's global RNG
    (so ``cnnkit.manual_seed`` makes the run reproducible)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self):
        order = cnnkit.get_generator().permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def make_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, len(TARGETS)),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", action="store_true", help="use generated blobs, not Fashion-MNIST")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    cnnkit.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x_train, x_test, source = load_images(args.n_train, args.n_test, args.synthetic, rng)
    y_train, y_test = targets_of(x_train), targets_of(x_test)
    # Standardise the targets so the three losses weigh alike; errors are reported in real units.
    mean, std = y_train.mean(axis=0), y_train.std(axis=0) + 1e-6
    model = make_model()
    train = ArrayBatches(x_train, (y_train - mean) / std, batch_size=64, shuffle=True)
    test = ArrayBatches(x_test, (y_test - mean) / std, batch_size=256, shuffle=False)
    fit(model, nn.MSELoss(), optim.Adam(model.parameters(), lr=2e-3), train, test, epochs=args.epochs, verbose=2)

    test_mse = evaluate(model, test, nn.MSELoss())["loss"]
    model.eval()
    pred = model(x_test) * std + mean
    mae = np.abs(pred - y_test).mean(axis=0)
    baseline = np.abs(mean - y_test).mean(axis=0)
    print(f"{source}: {len(x_train)} training / {len(x_test)} test images, {time.perf_counter() - t0:.1f} s")
    print(f"{'target':<20}{'MAE':>10}{'MAE of predicting the mean':>30}")
    for name, err, base in zip(TARGETS, mae, baseline):
        print(f"{name:<20}{err:>10.3f}{base:>30.3f}")
    print(f"test MSE (standardised targets): {test_mse:.4f}")
    return {"mae": mae, "baseline_mae": baseline, "test_mse": test_mse}


if __name__ == "__main__":
    main()
