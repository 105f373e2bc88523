"""SqueezeNet 1.1 (Iandola et al., 2016) with torchvision's structure.

Same layers, order, initialisation and state_dict keys as ``torchvision.models.squeezenet1_1``:
``features.N.squeeze / expand1x1 / expand3x3`` for the Fire modules, ``classifier.1`` for the
final 1x1 convolution. A Fire module is a 1x1 "squeeze" convolution followed by two parallel
"expand" convolutions (1x1 and 3x3) whose outputs are concatenated along channels; it is wired
from ``nn.Sequential`` and ``nn.Concat``, so it has no backward code of its own.
"""

from __future__ import annotations

from collections import OrderedDict

from .. import nn
from ..nn import init
from ..nn.containers import Sequential
from ._args import check_positive_ints, check_probability
from ._wired import Wired


class Fire(Wired):
    """SqueezeNet's Fire module.

    Args:
        inplanes: input channels.
        squeeze_planes: channels of the 1x1 squeeze convolution.
        expand1x1_planes: channels of the 1x1 expand branch.
        expand3x3_planes: channels of the 3x3 expand branch.

    Shape:
        (N, inplanes, H, W) -> (N, expand1x1_planes + expand3x3_planes, H, W).
    """

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int):
        super().__init__()
        check_positive_ints("Fire", inplanes=inplanes, squeeze_planes=squeeze_planes,
                            expand1x1_planes=expand1x1_planes, expand3x3_planes=expand3x3_planes)
        self.inplanes = inplanes
        # Attribute names (and so state_dict keys) are torchvision's.
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU()
        self._wire(nn.Sequential(
            self.squeeze,
            self.squeeze_activation,
            nn.Concat(
                nn.Sequential(self.expand1x1, self.expand1x1_activation),
                nn.Sequential(self.expand3x3, self.expand3x3_activation),
                dim=1,
            ),
        ))


class SqueezeNet(Sequential):
    """SqueezeNet 1.1 with torchvision's structure and keys.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        dropout: dropout probability before the final convolution.

    Shape:
        (N, in_channels, H, W) with H, W >= 17 -> (N, num_classes) logits (non-negative: the
        final convolution is followed by a ReLU, as in torchvision).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        check_positive_ints("squeezenet1_1", num_classes=num_classes, in_channels=in_channels)
        check_probability("squeezenet1_1", "dropout", dropout)
        features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        classifier = nn.Sequential(
            nn.Dropout(dropout),
            final_conv,
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        super().__init__(OrderedDict(
            features=features,
            classifier=classifier,
            flatten=nn.Flatten(),  # torch.flatten(x, 1) in torchvision's forward
        ))
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    init.normal_(m.weight, 0.0, 0.01)
                else:
                    init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    init.zeros_(m.bias)


def squeezenet1_1(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> SqueezeNet:
    """SqueezeNet 1.1, 1,235,496 parameters with 1000 classes; see ``SqueezeNet``."""
    return SqueezeNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
