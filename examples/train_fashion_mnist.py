"""Train LeNet on Fashion-MNIST with the Python API (what `cnnkit train` does, by hand).

    python examples/train_fashion_mnist.py --epochs 2
    python examples/train_fashion_mnist.py --epochs 1 --limit 2000    # a quick run
    cnnkit predict lenet_fashion.safetensors some_image.png           # use the result

The images are found in /usr/share/datasets/fashion-mnist or wherever
``cnnkit.data.FashionMNIST`` looks (see its docstring); pass --data to point elsewhere, or
--download to fetch them (checksummed) when they are not found.
"""

import argparse

import numpy as np

import cnnkit
from cnnkit import nn, optim, train
from cnnkit.data import DataLoader, FashionMNIST, Subset, random_split
from cnnkit.data.transforms import Normalize

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--limit", type=int, default=0, help="use only this many train (and test) images; 0 = all")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--data", default=None, help="folder holding the Fashion-MNIST IDX files")
parser.add_argument("--download", action="store_true", help="download Fashion-MNIST if it is not found")
parser.add_argument("--out", default="lenet_fashion.safetensors")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

cnnkit.manual_seed(args.seed)  # weights, shuffling and the split below are reproducible
train_set = FashionMNIST(root=args.data, train=True, download=args.download)
test_set = FashionMNIST(root=args.data, train=False, download=args.download)
if args.limit:
    train_set = Subset(train_set, np.arange(min(args.limit, len(train_set))))
    test_set = Subset(test_set, np.arange(min(args.limit, len(test_set))))
train_part, val_part = random_split(train_set, [0.9, 0.1], seed=args.seed)

# Scale to [0, 1] (the loader does it), then standardise with the training set's statistics.
normalize = Normalize(mean=[0.2860], std=[0.3530])
train_loader = DataLoader(train_part, batch_size=args.batch_size, shuffle=True, transform=normalize)
val_loader = DataLoader(val_part, batch_size=256, transform=normalize)
test_loader = DataLoader(test_set, batch_size=256, transform=normalize)

model = cnnkit.models.create("lenet", num_classes=10)
model.summary((1, 28, 28))  # prints the layer table
loss_fn = nn.CrossEntropyLoss()
optimizer = optim.Adam(model.parameters(), lr=args.lr)
history = train.fit(model, loss_fn, optimizer, train_loader, val_loader, epochs=args.epochs, verbose=2)

result = train.evaluate(model, test_loader, loss_fn)
# The meta keys are what `cnnkit predict` reads to preprocess new images the same way.
cnnkit.save(model, args.out, optimizer=optimizer, meta={
    "classes": list(train_set.classes), "input_shape": [1, 28, 28], "dataset": "fashion-mnist",
    "normalize": {"mean": [0.2860], "std": [0.3530]}, "epoch": args.epochs})
print(f"final val accuracy: {history.history['val_accuracy'][-1]:.4f}")
print(f"test loss: {result['loss']:.4f}")
print(f"test accuracy: {result['accuracy']:.4f} on {result['num_samples']} images")
print(f"saved {args.out}; reload with cnnkit.load({args.out!r})")
