"""One table of every layer and container: float64 gradient check of the input and every parameter.

Adding a layer means adding one line to CASES: (id, factory, input shape, input kind).
Input kinds: "normal" (standard normal), "kinks" (|x| >= 0.1 and away from 6, for ReLU-like
layers, whose finite differences are meaningless at a kink), "spread" (distinct values far
apart, for max pooling, whose windows must be free of near-ties).
"""

from collections import OrderedDict

import numpy as np
import pytest

import cnnkit
from cnnkit import nn
from cnnkit.gradient_check import gradcheck


def _input(shape, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "kinks":
        x = rng.uniform(-7, 8, shape)
        x[np.abs(x) < 0.1] = 0.5
        x[np.abs(x - 6) < 0.1] = 5.5
        return x
    if kind == "spread":
        # a permutation of well-separated values: no two elements of a window are within eps
        return rng.permutation(np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape) * 0.1
    raise ValueError(kind)


CASES = [
    # convolution and padding (nn/conv.py)
    ("conv2d", lambda: nn.Conv2d(3, 4, 3), (2, 3, 5, 5), "normal"),
    ("conv2d_stride2_pad1_nobias", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), (2, 2, 6, 5), "normal"),
    ("conv2d_rect_kernel_dilation", lambda: nn.Conv2d(2, 2, (2, 3), dilation=2, padding=(1, 2)), (1, 2, 6, 6), "normal"),
    ("conv2d_groups", lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1), (2, 4, 4, 4), "normal"),
    ("conv2d_depthwise", lambda: nn.Conv2d(3, 3, 3, groups=3, stride=2, padding=1), (2, 3, 5, 5), "normal"),
    ("conv2d_same_stride1", lambda: nn.Conv2d(2, 2, 4, padding="same"), (1, 2, 5, 5), "normal"),
    ("conv2d_same_stride2", lambda: nn.Conv2d(2, 3, 3, stride=2, padding="same"), (1, 2, 6, 5), "normal"),
    ("conv2d_valid", lambda: nn.Conv2d(2, 2, 2, padding="valid"), (1, 2, 3, 4), "normal"),
    ("zeropad2d", lambda: nn.ZeroPad2d((1, 2, 0, 1)), (2, 2, 3, 3), "normal"),
    # pooling (nn/pooling.py)
    ("maxpool2x2", lambda: nn.MaxPool2d(2), (2, 2, 4, 6), "spread"),
    ("maxpool3_s2_p1", lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 5, 5), "spread"),
    ("maxpool_ceil", lambda: nn.MaxPool2d(2, ceil_mode=True), (1, 2, 5, 5), "spread"),
    ("avgpool2x2", lambda: nn.AvgPool2d(2), (2, 2, 4, 4), "normal"),
    ("avgpool3_s2_p1", lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 2, 5, 5), "normal"),
    ("avgpool_exclude_pad_ceil", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     (1, 2, 6, 6), "normal"),
    ("adaptive_avgpool_1", lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 4, 5), "normal"),
    ("adaptive_avgpool_2x3", lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7), "normal"),
    # linear family (nn/linear.py)
    ("linear", lambda: nn.Linear(5, 3), (4, 5), "normal"),
    ("linear_3d_nobias", lambda: nn.Linear(5, 3, bias=False), (2, 3, 5), "normal"),
    ("flatten", lambda: nn.Flatten(), (2, 3, 2, 2), "normal"),
    ("identity", lambda: nn.Identity(), (2, 3), "normal"),
    # activations (nn/activation.py)
    ("relu", lambda: nn.ReLU(), (3, 4, 2, 2), "kinks"),
    ("relu6", lambda: nn.ReLU6(), (3, 4, 2, 2), "kinks"),
    ("leaky_relu", lambda: nn.LeakyReLU(0.1), (3, 4), "kinks"),
    ("sigmoid", lambda: nn.Sigmoid(), (3, 4), "normal"),
    ("tanh", lambda: nn.Tanh(), (3, 4), "normal"),
    ("softmax_dim1", lambda: nn.Softmax(dim=1), (2, 3, 2, 2), "normal"),
    ("log_softmax_dim-1", lambda: nn.LogSoftmax(dim=-1), (3, 5), "normal"),
    # normalisation and dropout
    ("batchnorm1d_train", lambda: nn.BatchNorm1d(3), (5, 3), "normal"),
    ("batchnorm1d_3d_train", lambda: nn.BatchNorm1d(3), (2, 3, 4), "normal"),
    ("batchnorm2d_train", lambda: nn.BatchNorm2d(2), (2, 2, 3, 3), "normal"),
    ("batchnorm2d_eval", lambda: _stats(nn.BatchNorm2d(2)).eval(), (2, 2, 3, 3), "normal"),
    ("dropout", lambda: nn.Dropout(0.4), (4, 5), "normal"),
    # containers
    ("sequential_cnn", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
                                             nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2)),
     (2, 2, 4, 4), "normal"),
    ("sequential_ordered_dict", lambda: nn.Sequential(OrderedDict(fc=nn.Linear(3, 3), act=nn.Tanh())), (2, 3), "normal"),
    ("concat_channels", lambda: nn.Concat(nn.Conv2d(2, 3, 1), nn.Conv2d(2, 2, 3, padding=1), nn.Identity()),
     (2, 2, 3, 3), "normal"),
    ("residual_identity", lambda: nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh())),
     (1, 2, 4, 4), "normal"),
    ("residual_projection", lambda: nn.Residual(nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Sigmoid()),
                                                nn.Conv2d(2, 4, 1, stride=2)), (1, 2, 4, 4), "normal"),
]


def _stats(bn):
    rng = np.random.default_rng(5)
    bn.running_mean[...] = rng.standard_normal(bn.num_features)
    bn.running_var[...] = rng.uniform(0.5, 2, bn.num_features)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
    return bn


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradcheck_table(case):
    _, make, shape, kind = case
    cnnkit.manual_seed(0)
    assert gradcheck(make(), _input(shape, kind))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_float32_in_float32_out(case):
    _, make, shape, kind = case
    layer = make()
    x = _input(shape, kind).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    g = np.ones(y.shape, np.float32)
    g.flags.writeable = False
    gx = layer.backward(g)
    assert gx.dtype == np.float32 and gx.shape == x.shape
    for name, p in layer.named_parameters():
        assert p.grad.dtype == np.float32, name
