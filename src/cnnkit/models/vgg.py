"""VGG-11 and VGG-16 (Simonyan & Zisserman, 2014) with torchvision's structure.

Same layers, order, initialisation and state_dict keys as ``torchvision.models.vgg11`` /
``vgg11_bn`` / ``vgg16`` / ``vgg16_bn``: ``features.N.*`` (3x3 convolutions, optional BatchNorm,
ReLU, 2x2 max-poolings), ``avgpool`` = AdaptiveAvgPool2d(7), ``classifier.0/3/6`` (dense 25088 ->
4096 -> 4096 -> num_classes with ReLU and dropout between). torchvision weights converted with
``cnnkit.io.load_torch`` load as they are. The five poolings need inputs of at least 32x32.
"""

from __future__ import annotations

from collections import OrderedDict

from .. import nn
from ..nn import init
from ..nn.containers import Sequential
from ._args import check_positive_ints, check_probability

# torchvision's configurations: channels of each 3x3 convolution, "M" a 2x2 max-pooling.
VGG_PLANS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # VGG-11
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # VGG-16
}


def make_vgg_features(plan: list, in_channels: int = 3, batch_norm: bool = False) -> nn.Sequential:
    """The convolutional part of a VGG (torchvision's ``make_layers``)."""
    layers = []
    channels = in_channels
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU())
        channels = item
    return nn.Sequential(*layers)


class VGG(Sequential):
    """A VGG network with torchvision's structure and keys.

    Args:
        features: the convolutional part (see ``make_vgg_features``), ending with 512 channels.
        num_classes: number of output logits.
        dropout: dropout probability in the classifier.
        init_weights: apply torchvision's initialisation (He normal fan-out convolutions,
            N(0, 0.01) dense weights, zero biases, BatchNorm 1 / 0); otherwise keep the layers'
            PyTorch default initialisation.

    Shape:
        (N, C, H, W) with H, W >= 32 -> (N, num_classes) logits.
    """

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5,
                 init_weights: bool = True):
        check_positive_ints("VGG", num_classes=num_classes)
        check_probability("VGG", "dropout", dropout)
        classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        super().__init__(OrderedDict(
            features=features,
            avgpool=nn.AdaptiveAvgPool2d(7),
            flatten=nn.Flatten(),  # torch.flatten(x, 1) in torchvision's forward
            classifier=classifier,
        ))
        if init_weights:
            _torchvision_vgg_init(self)


def _torchvision_vgg_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            init.ones_(m.weight)
            init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init.normal_(m.weight, 0.0, 0.01)
            init.zeros_(m.bias)


def _vgg(model: str, plan: str, batch_norm: bool, num_classes: int, in_channels: int, dropout: float,
         init_weights: bool) -> VGG:
    check_positive_ints(model, num_classes=num_classes, in_channels=in_channels)
    features = make_vgg_features(VGG_PLANS[plan], in_channels=in_channels, batch_norm=batch_norm)
    return VGG(features, num_classes=num_classes, dropout=dropout, init_weights=init_weights)


def vgg11(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, init_weights: bool = True) -> VGG:
    """VGG-11 (configuration A), 132,863,336 parameters with 1000 classes; see ``VGG``."""
    return _vgg("vgg11", "A", False, num_classes, in_channels, dropout, init_weights)


def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, init_weights: bool = True) -> VGG:
    """VGG-11 with BatchNorm after every convolution; see ``VGG``."""
    return _vgg("vgg11_bn", "A", True, num_classes, in_channels, dropout, init_weights)


def vgg16(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, init_weights: bool = True) -> VGG:
    """VGG-16 (configuration D), 138,357,544 parameters with 1000 classes; see ``VGG``."""
    return _vgg("vgg16", "D", False, num_classes, in_channels, dropout, init_weights)


def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, init_weights: bool = True) -> VGG:
    """VGG-16 with BatchNorm after every convolution; see ``VGG``."""
    return _vgg("vgg16_bn", "D", True, num_classes, in_channels, dropout, init_weights)
