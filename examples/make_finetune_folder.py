"""Build a small, imbalanced image folder of real photos for the fine-tuning example.

Real Fashion-MNIST images (Zalando's product photos, 28x28 grey) of three kinds of shoes,
with their real labels: Sneaker, Sandal and Ankle boot, written as PNG files in one
sub-folder per class (the layout ``cnnkit finetune --data`` and ``cnnkit.data.ImageFolder``
read). The classes are deliberately imbalanced (by default 160 / 80 / 40 images), which is
what the class-weighted loss of ``cnnkit finetune`` is for. A separate, balanced test folder
from the official test split (images the fine-tune never sees) can be written too.

    python examples/make_finetune_folder.py shoes/ --test-out shoes_test/
    cnnkit finetune --model efficientnet_lite0 --data shoes/ --out runs/shoes
    cnnkit predict runs/shoes shoes_test/Sandal/0000.png

Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist
package) or wherever ``cnnkit.data.FashionMNIST`` finds it; nothing is downloaded unless
``--download`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cnnkit.data import FashionMNIST

SHOES = {"Sneaker": 7, "Sandal": 5, "Ankle boot": 9}  # folder name -> Fashion-MNIST label


def write_folder(ds, out: Path, counts: dict[str, int], rng: np.random.Generator) -> dict[str, int]:
    """Write ``counts[name]`` random images of each class to ``out/<name>/NNNN.png``."""
    written = {}
    for name, n in counts.items():
        idx = np.flatnonzero(ds.targets == SHOES[name])
        if n > idx.size:
            raise ValueError(f"asked for {n} {name} images, the split has {idx.size}")
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(rng.choice(idx, size=n, replace=False)):
            Image.fromarray(ds.data[i]).save(folder / f"{j:04d}.png")
        written[name] = n
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to create (one sub-folder per class)")
    ap.add_argument("--counts", type=int, nargs=3, default=[160, 80, 40], metavar=("SNEAKER", "SANDAL", "BOOT"),
                    help="images per class, Sneaker Sandal Ankle-boot (default 160 80 40)")
    ap.add_argument("--test-out", type=Path, default=None, help="also write a balanced test folder here")
    ap.add_argument("--test-per-class", type=int, default=100, help="test images per class (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=None, help="folder holding the Fashion-MNIST IDX files")
    ap.add_argument("--download", action="store_true", help="download Fashion-MNIST if it is not found")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    train = FashionMNIST(root=args.root, train=True, download=args.download)
    counts = dict(zip(SHOES, args.counts))
    print(f"{args.out}: {write_folder(train, args.out, counts, rng)} (from the training split)")
    if args.test_out is not None:
        test = FashionMNIST(root=args.root, train=False, download=args.download)
        per = {name: args.test_per_class for name in SHOES}
        print(f"{args.test_out}: {write_folder(test, args.test_out, per, rng)} (from the test split)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
