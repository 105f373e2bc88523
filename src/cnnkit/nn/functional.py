"""cnnkit.nn.functional: PyTorch's functional names, each a differentiable operation.

Every function takes Tensors (arrays and numbers are accepted too) and returns a Tensor;
each is ``Function.apply`` of an op in ``cnnkit.ops``, where its forward and backward are
written out. Arguments and defaults are PyTorch's (``dim=``, ``reduction=``, ``training=``).

Example::

    import cnnkit.nn.functional as F
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    loss = F.nll_loss(F.log_softmax(out, dim=1), target)
"""

from __future__ import annotations

import math

import numpy as np

from ..autograd import grad_mode
from ..ops import activation as _act
from ..ops import conv as _conv
from ..ops import dropout as _drop
from ..ops import linear as _lin
from ..ops import normalization as _norm
from ..ops import pool as _pool
from ..ops import shape as _shape
from ..random import get_generator
from .._tensor import Tensor
from . import _kernels as K
from . import deferred as _deferred

__all__ = ["conv2d", "linear", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "relu", "relu6",
           "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "dropout", "batch_norm", "pad",
           "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "binary_cross_entropy_with_logits",
           "flatten", "one_hot", "conv_padding", "dropout_mask"]


def _tensor(x, name: str, fn: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        return Tensor(x)
    raise TypeError(f"{fn}: {name} must be a Tensor or an array, got {type(x).__name__}")


def _floating(x: Tensor, fn: str) -> Tensor:
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{fn}: expected a floating-point input, got dtype {x.dtype} (convert with .float())")
    return x


def _four_d(x: Tensor, fn: str) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"{fn}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    return _floating(x, fn)


# ---------------------------------------------------------------------------------- convolution
def conv_padding(padding, in_hw, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """``padding`` (int, pair, 'same', 'valid' or a 4-tuple) as (top, bottom, left, right)."""
    if isinstance(padding, tuple) and len(padding) == 4:
        return tuple(int(p) for p in padding)
    return K.resolve_conv_padding(padding, in_hw, kernel, stride, dilation)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation) of an NCHW batch with OIHW weights.

    Args:
        input: (N, C, H, W). weight: (O, C // groups, kh, kw). bias: (O,) or None.
        stride, dilation: int or pair. padding: int, pair, ``'valid'`` or ``'same'``.
        groups: channel groups (``groups == C`` is depthwise).

    Returns:
        (N, O, Ho, Wo), an NCHW view of channels-last memory.
    """
    x = _four_d(_tensor(input, "input", "conv2d"), "conv2d")
    weight = _tensor(weight, "weight", "conv2d")
    stride, dilation = K.pair(stride, "stride"), K.pair(dilation, "dilation")
    pads = conv_padding(padding, x.shape[2:], weight.shape[2:], stride, dilation)
    out = _deferred_conv(x, weight, bias, stride, pads, dilation, int(groups))
    if out is not None:
        return out
    return _conv.Conv2d.apply(x, weight, bias, stride, pads, dilation, int(groups))


def _deferred_conv(x, weight, bias, stride, pads, dilation, groups):
    """Inside a module's forward(): the convolution deferred so that a ReLU or pool called
    next can join its pass (``nn.deferred``); else None."""
    if weight.ndim != 4 or x.shape[1] != weight.shape[1] * groups:
        return None
    if bias is not None and not isinstance(bias, Tensor):
        return None
    out_hw = tuple(K.conv_output_size(x.shape[2 + i], weight.shape[2 + i], stride[i], pads[2 * i] + pads[2 * i + 1],
                                      dilation[i]) for i in range(2))
    if min(out_hw) < 1:
        return None
    return _deferred.conv2d(x, weight, bias, stride, pads, dilation, groups, out_hw, min_depth=1)


def linear(input, weight, bias=None) -> Tensor:
    """``input @ weight.T + bias``; input (*, in_features), weight (out_features, in_features)."""
    x = _floating(_tensor(input, "input", "linear"), "linear")
    weight = _tensor(weight, "weight", "linear")
    if x.ndim == 0 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: expected input with last dimension {weight.shape[-1]}, got shape {tuple(x.shape)}")
    return _lin.Linear.apply(x, weight, bias)


def pad(input, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad the last dimensions: ``pad = (left, right, top, bottom, ...)`` from the last one
    backwards (negative amounts crop). Only ``mode='constant'``."""
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not supported (only 'constant')")
    x = _tensor(input, "input", "pad")
    pad = tuple(int(p) for p in pad)
    if x.ndim == 4 and len(pad) == 4:
        return _conv.ZeroPad2d.apply(x, pad, value)
    return _shape.Pad.apply(x, pad, value)


# ---------------------------------------------------------------------------------- pooling
def _pool_check(x, kernel, stride, padding, ceil_mode, fn):
    h, w = x.shape[2], x.shape[3]
    for p, k in zip(padding, kernel):
        if p > k // 2:
            raise ValueError(f"{fn}: padding should be at most half of kernel_size, got padding={padding} "
                             f"for kernel_size={kernel}")
    ho = K.pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = K.pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"{fn}: input spatial size ({h}, {w}) is too small for kernel_size {kernel} "
                         f"with padding {padding}")


def _pool_args(kernel_size, stride, padding, fn):
    kernel = K.pair(kernel_size, f"{fn} kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else K.pair(stride, f"{fn} stride")
    return kernel, stride, K.pair(padding, f"{fn} padding", minimum=0)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False) -> Tensor:
    """Maximum over sliding windows of an NCHW batch (``stride`` defaults to ``kernel_size``)."""
    if K.pair(dilation, "max_pool2d dilation") != (1, 1):
        raise NotImplementedError("max_pool2d: dilation other than 1 is not supported")
    if return_indices:
        raise NotImplementedError("max_pool2d: return_indices is not supported")
    x = _four_d(_tensor(input, "input", "max_pool2d"), "max_pool2d")
    kernel, stride, padding = _pool_args(kernel_size, stride, padding, "max_pool2d")
    _pool_check(x, kernel, stride, padding, ceil_mode, "max_pool2d")
    out = _deferred.then_max_pool(x, kernel, stride, padding, ceil_mode)
    if out is not None:
        return out
    return _pool.MaxPool2d.apply(x, kernel, stride, padding, bool(ceil_mode))


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override=None) -> Tensor:
    """Mean over sliding windows of an NCHW batch."""
    if divisor_override is not None:
        raise NotImplementedError("avg_pool2d: divisor_override is not supported")
    x = _four_d(_tensor(input, "input", "avg_pool2d"), "avg_pool2d")
    kernel, stride, padding = _pool_args(kernel_size, stride, padding, "avg_pool2d")
    _pool_check(x, kernel, stride, padding, ceil_mode, "avg_pool2d")
    out = _deferred.then_avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad)
    if out is not None:
        return out
    return _pool.AvgPool2d.apply(x, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    """Average pooling to a fixed ``output_size`` (int or pair; None keeps that size)."""
    x = _four_d(_tensor(input, "input", "adaptive_avg_pool2d"), "adaptive_avg_pool2d")
    return _pool.AdaptiveAvgPool2d.apply(x, output_size)


# ---------------------------------------------------------------------------------- activations
def relu(input, inplace: bool = False) -> Tensor:
    """max(x, 0). ``inplace`` is accepted and ignored: a new tensor is returned."""
    out = _deferred.then_relu(input)
    if out is not None:
        return out
    return _act.ReLU.apply(_floating(_tensor(input, "input", "relu"), "relu"))


def relu6(input, inplace: bool = False) -> Tensor:
    """min(max(x, 0), 6)."""
    return _act.ReLU6.apply(_floating(_tensor(input, "input", "relu6"), "relu6"))


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x for x > 0, else negative_slope * x."""
    return _act.LeakyReLU.apply(_floating(_tensor(input, "input", "leaky_relu"), "leaky_relu"), float(negative_slope))


def sigmoid(input) -> Tensor:
    """1 / (1 + exp(-x)), without overflow."""
    return _act.Sigmoid.apply(_floating(_tensor(input, "input", "sigmoid"), "sigmoid"))


def tanh(input) -> Tensor:
    return _act.Tanh.apply(_floating(_tensor(input, "input", "tanh"), "tanh"))


def _dim(x: Tensor, dim, fn: str) -> int:
    if dim is None:
        # PyTorch's legacy rule for an implicit dim: 0 for 0-, 1- and 3-D inputs, else 1.
        dim = 0 if x.ndim in (0, 1, 3) else 1
    if not -max(x.ndim, 1) <= dim < max(x.ndim, 1):
        raise IndexError(f"{fn}: dim {dim} is out of range for an input of shape {tuple(x.shape)}")
    return dim % max(x.ndim, 1)


def softmax(input, dim=None, dtype=None) -> Tensor:
    """exp(x) / sum(exp(x)) along ``dim``."""
    x = _floating(_tensor(input, "input", "softmax"), "softmax")
    if dtype is not None:
        x = x.type(dtype)
    return _act.Softmax.apply(x, _dim(x, dim, "softmax"))


def log_softmax(input, dim=None, dtype=None) -> Tensor:
    """x - logsumexp(x) along ``dim``."""
    x = _floating(_tensor(input, "input", "log_softmax"), "log_softmax")
    if dtype is not None:
        x = x.type(dtype)
    return _act.LogSoftmax.apply(x, _dim(x, dim, "log_softmax"))


# ---------------------------------------------------------------------------------- dropout / normalisation
def dropout_mask(shape, p: float, dtype, generator=None) -> np.ndarray:
    """The scaled keep mask of inverted dropout: 0 or 1 / (1 - p) in ``dtype``.

    Why raw bits: the generator's 64-bit outputs, seen as two uint32 each, compared with
    p * 2**32, cost ~60% of ``rng.random(dtype=float32) >= p`` (64 x 256: 15 us against
    25 us) and resolve p to 2**-32, finer than float32's 2**-24."""
    if p >= 1.0:
        return np.zeros(shape, dtype)
    n = math.prod(shape)
    rng = get_generator(generator)
    bits = rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n].reshape(shape)
    threshold = np.uint32(min(round(p * 2.0 ** 32), 2 ** 32 - 1))
    return (bits >= threshold) * np.dtype(dtype).type(1.0 / (1.0 - p))


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False, generator=None) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) when
    ``training`` (note PyTorch's default: ``training=True`` in the functional form)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p}")
    x = _floating(_tensor(input, "input", "dropout"), "dropout")
    if not training or p == 0.0:
        return x
    return _drop.Dropout.apply(x, dropout_mask(x.shape, float(p), x.dtype, generator))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation over every dimension but dim 1 (PyTorch's argument order).
    ``running_mean`` / ``running_var`` (arrays or Tensors, or None) are updated in place
    when ``training``."""
    x = _floating(_tensor(input, "input", "batch_norm"), "batch_norm")
    rm = running_mean.data if isinstance(running_mean, Tensor) else running_mean
    rv = running_var.data if isinstance(running_var, Tensor) else running_var
    return _norm.BatchNorm.apply(x, weight, bias, rm, rv, bool(training), momentum, eps)


# ---------------------------------------------------------------------------------- shape
def flatten(input, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Flatten dimensions ``start_dim`` .. ``end_dim`` into one (``torch.flatten``)."""
    x = _tensor(input, "input", "flatten")
    nd = x.ndim
    s = start_dim + nd if start_dim < 0 else start_dim
    e = end_dim + nd if end_dim < 0 else end_dim
    if nd == 0:
        return x.reshape(1)
    if not (0 <= s < nd and 0 <= e < nd) or s > e:
        raise IndexError(f"flatten: cannot flatten dims {start_dim}..{end_dim} of a tensor of shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    new = shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]
    return _shape.Flatten.apply(x, new) if (x.requires_grad and grad_mode._enabled) else Tensor._wrap(
        _shape.flatten_array(x.data, new))


def one_hot(tensor, num_classes: int = -1) -> Tensor:
    """(..., num_classes) int64 one-hot encoding of integer class indices."""
    t = np.asarray(tensor.data if isinstance(tensor, Tensor) else tensor)
    n = int(t.max()) + 1 if num_classes < 0 else int(num_classes)
    return Tensor._wrap((t[..., None] == np.arange(n)).astype(np.int64))


# ---------------------------------------------------------------------------------- losses
def _loss(cls, input, target, **kwargs) -> Tensor:
    from . import losses

    return getattr(losses, cls)(**kwargs)(input, target)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy on logits (log_softmax + nll_loss in one stable step)."""
    return _loss("CrossEntropyLoss", input, target, weight=_array(weight), ignore_index=ignore_index,
                 reduction=_legacy_reduction(size_average, reduce, reduction), label_smoothing=label_smoothing)


def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities: -input[n, target[n]] (weighted, reduced)."""
    return _loss("NLLLoss", input, target, weight=_array(weight), ignore_index=ignore_index,
                 reduction=_legacy_reduction(size_average, reduce, reduction))


def mse_loss(input, target, size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    return _loss("MSELoss", input, target, reduction=_legacy_reduction(size_average, reduce, reduction))


def l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    return _loss("L1Loss", input, target, reduction=_legacy_reduction(size_average, reduce, reduction))


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction: str = "mean", pos_weight=None) -> Tensor:
    return _loss("BCEWithLogitsLoss", input, target, weight=_array(weight), pos_weight=_array(pos_weight),
                 reduction=_legacy_reduction(size_average, reduce, reduction))


def _array(x):
    return x.data if isinstance(x, Tensor) else x


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    """PyTorch's deprecated ``size_average`` / ``reduce`` pair, as it maps them."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "none" if not reduce else ("mean" if size_average else "sum")
