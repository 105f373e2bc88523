"""The small seed models for 28x28 greyscale images (MNIST, Fashion-MNIST).

Each is a plain ``nn.Sequential``, so its state_dict keys (``0.weight``, ``3.bias``, ...) are
those of a PyTorch ``nn.Sequential`` with the same layers, and PyTorch weights load as they are.
Layers keep PyTorch's default initialisation.

``input_size`` (default 28) only sets the width of the first dense layer, so the same models
also run on other square sizes (e.g. 32x32 CIFAR images with ``in_channels=3``).
"""

from __future__ import annotations

from .. import nn
from ._args import check_positive_ints


def _after(size: int, kernel: int, pool: int = 1, what: str = "model") -> int:
    """Spatial size after a 'valid' convolution with ``kernel`` then a ``pool`` x ``pool`` pooling."""
    out = (size - kernel + 1) // pool
    if out < 1:
        raise ValueError(f"{what}: input_size is too small for its convolutions and poolings")
    return out


def lenet(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Sequential:
    """LeNet as in PyTorch's MNIST example (without dropout).

    conv 5x5 (10) -> maxpool 2 -> relu -> conv 5x5 (20) -> maxpool 2 -> relu -> flatten ->
    linear 320 -> num_classes (320 = 20 * 4 * 4 on 28x28 inputs).

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        input_size: height = width of the input images.

    Returns:
        An ``nn.Sequential``; keys ``0.*`` (conv), ``3.*`` (conv), ``7.*`` (linear).

    Shape:
        (N, in_channels, input_size, input_size) -> (N, num_classes) logits.
    """
    check_positive_ints("lenet", num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    side = _after(_after(input_size, 5, 2, "lenet"), 5, 2, "lenet")
    return nn.Sequential(
        nn.Conv2d(in_channels, 10, kernel_size=5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(10, 20, kernel_size=5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(20 * side * side, num_classes),
    )


def scratch_cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Sequential:
    """The "CNN from scratch" seed model (seed 000).

    conv 3x3 (20) -> relu -> avgpool 2 -> conv 5x5 (50) -> relu -> avgpool 2 -> flatten ->
    dense 128 -> relu -> dense num_classes (the first dense layer is 800 -> 128 on 28x28).

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        input_size: height = width of the input images.

    Returns:
        An ``nn.Sequential``; keys ``0.*``, ``3.*`` (convs), ``7.*``, ``9.*`` (dense).

    Shape:
        (N, in_channels, input_size, input_size) -> (N, num_classes) logits.
    """
    check_positive_ints("scratch_cnn", num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    side = _after(_after(input_size, 3, 2, "scratch_cnn"), 5, 2, "scratch_cnn")
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, kernel_size=3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * side * side, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def convnet(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Sequential:
    """The small "convnet" seed model (seed 004).

    conv 5x5 (8) -> relu -> conv 5x5 (8) -> relu -> maxpool 2 -> flatten -> dense 128 -> relu ->
    dense num_classes (the first dense layer is 800 -> 128 on 28x28).

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        input_size: height = width of the input images.

    Returns:
        An ``nn.Sequential``; keys ``0.*``, ``2.*`` (convs), ``6.*``, ``8.*`` (dense).

    Shape:
        (N, in_channels, input_size, input_size) -> (N, num_classes) logits.
    """
    check_positive_ints("convnet", num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    side = _after(_after(input_size, 5, 1, "convnet"), 5, 2, "convnet")
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=5),
        nn.ReLU(),
        nn.Conv2d(8, 8, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * side * side, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )
