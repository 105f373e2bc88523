"""ResNet-18 (He et al., 2015) with torchvision's structure.

Same layers, order, initialisation and state_dict keys as ``torchvision.models.resnet18``:
``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.bn1``, ..., ``layer2.0.downsample.0/1``, ``fc``.
A BasicBlock is ``relu(body(x) + shortcut(x))`` wired from ``nn.Residual`` and
``nn.Sequential``, so it has no backward code of its own.
"""

from __future__ import annotations

from collections import OrderedDict

from .. import nn
from ..nn import init
from ..nn.containers import Sequential
from ._args import check_positive_ints
from ._wired import Wired


class BasicBlock(Wired):
    """ResNet's basic block: two 3x3 convolutions with BatchNorm, plus a shortcut.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the downsample shortcut).
        downsample: the shortcut (1x1 convolution + BatchNorm) when the shape changes; None
            for the identity.

    Shape:
        (N, inplanes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        check_positive_ints("BasicBlock", inplanes=inplanes, planes=planes, stride=stride)
        # Attribute names (and so state_dict keys) are torchvision's.
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        # torchvision applies its one (stateless) ReLU twice; ours caches for backward, so the
        # ReLU after the sum is a module of its own (no parameters: keys are unchanged).
        self.relu_out = nn.ReLU()
        self.stride = stride
        body = nn.Sequential(self.conv1, self.bn1, self.relu, self.conv2, self.bn2)
        self._wire(nn.Sequential(nn.Residual(body, downsample), self.relu_out))


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class ResNet(Sequential):
    """ResNet with basic blocks (ResNet-18 / 34 layouts) and torchvision's structure and keys.

    Args:
        layers: number of blocks in each of the four stages, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: number of output logits.
        in_channels: channels of the input images.
        zero_init_residual: start every block's last BatchNorm at weight 0, so each block
            begins as the identity (torchvision's option).

    Shape:
        (N, in_channels, H, W) -> (N, num_classes) logits.
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3,
                 zero_init_residual: bool = False):
        check_positive_ints("ResNet", num_classes=num_classes, in_channels=in_channels)
        if len(layers) != 4:
            raise ValueError(f"ResNet: layers must give the number of blocks of 4 stages, got {layers!r}")
        check_positive_ints("ResNet", **{f"layers[{i}]": n for i, n in enumerate(layers)})
        stages = []
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = _downsample(inplanes, planes, stride)
            stage = [BasicBlock(inplanes, planes, stride, downsample)]
            inplanes = planes
            stage += [BasicBlock(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        super().__init__(OrderedDict(
            conv1=nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
            bn1=nn.BatchNorm2d(64),
            relu=nn.ReLU(),
            maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            layer1=stages[0],
            layer2=stages[1],
            layer3=stages[2],
            layer4=stages[3],
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),  # torch.flatten(x, 1) in torchvision's forward
            fc=nn.Linear(512, num_classes),
        ))
        # torchvision's initialisation (the fc layer keeps the Linear default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                init.ones_(m.weight)
                init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    init.zeros_(m.bn2.weight)


def resnet18(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18, 11,689,512 parameters with 1000 classes; see ``ResNet``."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                  zero_init_residual=zero_init_residual)
