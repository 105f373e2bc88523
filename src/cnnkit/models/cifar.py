"""AlexNet and VGG adapted to 32x32 colour images (CIFAR-10).

The ImageNet originals shrink a 224x224 input by 32 before their classifier; on 32x32 inputs
they would be left with nothing to classify. These are the usual CIFAR adaptations:

``alexnet_cifar``: AlexNet's five convolutions with its channel widths (64, 192, 384, 256, 256),
stride 1 and 'same' padding, three 2x2 max-poolings (32 -> 16 -> 8 -> 4), then AlexNet's
classifier (dropout, dense, relu, dropout, dense, relu, dense) with 1024 hidden units instead of
4096 (the flattened features are 256 * 4 * 4 = 4096 wide). About 7.7 M parameters.

``vgg_cifar``: VGG's configurations A / B / D / E (11 / 13 / 16 / 19 layers) of 3x3 convolutions,
each followed by BatchNorm and ReLU, with five 2x2 max-poolings (32 -> 1) and a single linear
classifier on the 512 features, as in the widely used CIFAR-10 versions of VGG. ``width`` scales
every layer's channels (64 is VGG's; 16 gives a net 16 times cheaper for quick runs).

Both are ``nn.Sequential`` subclasses with children ``features``, ``flatten``, ``classifier``,
so state_dict keys read ``features.0.weight``, ``classifier.1.weight``, ... Layers keep
PyTorch's default initialisation.
"""

from __future__ import annotations

from collections import OrderedDict

from .. import nn
from ..nn.containers import Sequential
from ._args import check_positive_ints, check_probability

# Channel plans of VGG's configurations (in units of ``width``; "M" is a 2x2 max-pooling).
VGG_CIFAR_PLANS = {
    11: [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
    13: [1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
    16: [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],
    19: [1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"],
}


class AlexNetCifar(Sequential):
    """AlexNet for 32x32 inputs (see the module docstring for the design).

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        dropout: dropout probability before each hidden dense layer.

    Shape:
        (N, in_channels, 32, 32) -> (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5):
        check_positive_ints("alexnet_cifar", num_classes=num_classes, in_channels=in_channels)
        check_probability("alexnet_cifar", "dropout", dropout)
        features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 4 * 4, 1024),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )
        super().__init__(OrderedDict(features=features, flatten=nn.Flatten(), classifier=classifier))


class VGGCifar(Sequential):
    """VGG with BatchNorm for 32x32 inputs (see the module docstring for the design).

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        depth: 11, 13, 16 or 19 (VGG's configurations A, B, D, E).
        width: channels of the first stage (VGG: 64); later stages have 2x, 4x, 8x.
        batch_norm: put a BatchNorm2d after every convolution (the CIFAR standard).

    Shape:
        (N, in_channels, 32, 32) -> (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 11, width: int = 64,
                 batch_norm: bool = True):
        check_positive_ints("vgg_cifar", num_classes=num_classes, in_channels=in_channels, width=width)
        if depth not in VGG_CIFAR_PLANS:
            raise ValueError(f"vgg_cifar: depth must be one of {sorted(VGG_CIFAR_PLANS)}, got {depth!r}")
        layers = []
        channels = in_channels
        for item in VGG_CIFAR_PLANS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = item * width
            # The conv bias is redundant before BatchNorm (which subtracts the mean).
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            channels = out
        super().__init__(OrderedDict(
            features=nn.Sequential(*layers),
            flatten=nn.Flatten(),
            classifier=nn.Linear(channels, num_classes),
        ))


def alexnet_cifar(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> AlexNetCifar:
    """AlexNet adapted to 32x32 inputs; see ``AlexNetCifar``."""
    return AlexNetCifar(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def vgg_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 11, width: int = 64,
              batch_norm: bool = True) -> VGGCifar:
    """VGG with BatchNorm adapted to 32x32 inputs; see ``VGGCifar``."""
    return VGGCifar(num_classes=num_classes, in_channels=in_channels, depth=depth, width=width,
                    batch_norm=batch_norm)
