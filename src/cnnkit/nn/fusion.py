"""The one place that plans fused operations: how a ``Sequential`` runs its children.

A Sequential's children see each other's intermediate results only through this planner,
so where no hook observes them, several layers may run as one operation of the graph
(each a Function in ``cnnkit.ops`` with its own forward and backward):

- Conv2d -> ReLU -> MaxPool2d (or Conv2d -> MaxPool2d -> ReLU, LeNet's order: max and ReLU
  commute) as one pass (``ops.conv.Conv2dReluMaxPool``): the full-size output is never kept;
- without gradients, Conv2d -> ReLU -> AvgPool2d as one pass too
  (``ops.conv.Conv2dReluAvgPool``), the ReLU in the convolution's output pass;
- Conv2d -> ReLU: the ReLU in the convolution's output pass (``relu=True``);
- a ReLU's backward folded into the next Conv2d's / MaxPool2d's (``relu_input``), so the
  mask is applied while each chunk of the input gradient is in cache, or on a quarter of
  the data; the ReLU's own backward then passes the gradient through;
- without gradients, an eval-mode BatchNorm2d (and its ReLU / ReLU6) folded into the
  Conv2d before it (weights scaled, bias shifted, the activation a clip);
- a ReLU after a layer whose output nobody else sees works in place on it.

A module subclass that calls the same layers from its own ``forward()`` gets the same
values (within float32 rounding for the BatchNorm fold) and the same gradients; there
``nn.deferred`` fuses its Conv2d -> ReLU -> pool calls at run time into the same Functions. A forward hook on a module switches fusion off for it, so a hook always sees
the unfused value.
"""

from __future__ import annotations

import numpy as np

from ..autograd import grad_mode
from ..ops import activation as act_ops
from ..ops import conv as conv_ops
from ..ops import pool as pool_ops
from .._tensor import Tensor
from .activation import ReLU, ReLU6
from .conv import Conv2d
from .module import Module
from .normalization import BatchNorm2d
from .pooling import AvgPool2d, MaxPool2d, _check_input, _check_size

__all__ = ["run_sequential"]


def _plain(m: Module) -> bool:
    return not m._forward_hooks


def _is(m, cls) -> bool:
    """Exactly this layer type (a subclass may change what it computes) and no hook."""
    return m is not None and type(m) is cls and _plain(m)


def _plain_conv(m) -> bool:
    """A Conv2d whose forward is Conv2d's own (a subclass that changes it is called as it is)."""
    return isinstance(m, Conv2d) and type(m).forward is Conv2d.forward and _plain(m)


def _absorbs_relu_grad(m) -> bool:
    """Layers whose backward can apply the mask of a ReLU before them (``relu_input``)."""
    return m is not None and (_plain_conv(m) or _is(m, MaxPool2d))


def _fold_batch_norm(weight: np.ndarray, bias: np.ndarray | None, bn) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of the convolution that computes ``bn(conv(x))`` with ``bn``'s running
    statistics: each output channel's kernel times ``scale``, bias ``(bias - mean) * scale
    + shift``. Why: the BatchNorm's own pass over the activation (three passes over memory)
    becomes nothing, and its ReLU / ReLU6 a clip in the convolution's output pass, while
    the chunk is in cache. Costs one pass over the weights per call; PyTorch's
    ``fuse_conv_bn_eval`` computes the same. Results differ from the unfolded layers by
    float32 rounding only (the products are taken in another order). The mean moves into
    the bias here, which BatchNorm's own forward avoids (cancellation when |mean| >> std):
    the rounding that adds, about eps * |scale * mean|, is of the size the convolution's
    own sums already carry in an output of that magnitude, and no gradient is taken
    through it (inference only)."""
    mean, _, scale, shift = bn.running_affine(weight.dtype)
    folded = weight * scale.reshape(-1, 1, 1, 1)
    b = (-mean if bias is None else bias - mean) * scale
    if shift is not None:
        b += shift
    return folded, b


def _batch_norm_after(conv: Conv2d, bn, act) -> tuple[tuple | None, int]:
    """``((bn, cap), layers)`` when the eval-mode BatchNorm2d ``bn`` after ``conv`` (and the
    ReLU (cap True) or ReLU6 (cap 6.0) after it) can be folded into it; else (None, 0). For
    inference only. The BatchNorm must use its running statistics and match the channels
    and dtype."""
    if not (_is(bn, BatchNorm2d) and not bn.training and bn.running_mean is not None
            and bn.num_features == conv.out_channels and bn.running_mean.dtype == conv.weight.data.dtype):
        return None, 0
    if act is not None and _plain(act) and type(act) in (ReLU, ReLU6):
        return (bn, True if type(act) is ReLU else 6.0), 2
    return (bn, False), 1


def _conv_step(children: list, i: int, x: Tensor, relu_input: bool, grad: bool) -> tuple[Tensor, int]:
    """Run the Conv2d at ``children[i]`` with what can be fused after it; returns (output,
    how many children it consumed)."""
    conv = children[i]
    second = children[i + 1] if i + 1 < len(children) else None
    third = children[i + 2] if i + 2 < len(children) else None
    pads, out_hw = conv._geometry(x)
    conv_shape = (x.shape[0], conv.out_channels) + out_hw
    args = (x, conv.weight, conv.bias, conv.stride, pads, conv.dilation, conv.groups)
    # conv -> ReLU -> pool or conv -> pool -> ReLU, one pass (an eval-mode pool with
    # gradients recomputes its winners from the full-size input, which is not kept).
    pool = second if _is(third, ReLU) else third if _is(second, ReLU) else None
    if _is(pool, MaxPool2d) and (pool.training or not grad):
        _check_size(pool, _Shape(conv_shape), pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
        out = conv_ops.Conv2dReluMaxPool.apply(*args, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                                               relu_input=relu_input)
        return out, 3
    if not grad and _is(second, ReLU) and _is(third, AvgPool2d):
        _check_size(third, _Shape(conv_shape), third.kernel_size, third.stride, third.padding, third.ceil_mode)
        out = conv_ops.Conv2dReluAvgPool.apply(*args, third.kernel_size, third.stride, third.padding,
                                               third.ceil_mode, third.count_include_pad)
        return out, 3
    if not grad:
        fold, layers = _batch_norm_after(conv, second, third)
        if fold is not None:
            w, b = _fold_batch_norm(conv.weight.data, None if conv.bias is None else conv.bias.data, fold[0])
            out = conv_ops.Conv2d.apply(x, w, b, conv.stride, pads, conv.dilation, conv.groups, relu=fold[1])
            return out, 1 + layers
    if _is(second, ReLU):
        out = conv_ops.Conv2d.apply(*args, relu=True, relu_input=relu_input,
                                    grad_premasked=grad and _absorbs_relu_grad(third))
        return out, 2
    return conv_ops.Conv2d.apply(*args, relu_input=relu_input), 1


class _Shape:
    """Stands for a tensor of this shape in size checks."""

    def __init__(self, shape):
        self.shape = shape


def _fresh(m: Module, out, inp) -> bool:
    """Whether ``out`` of ``m`` (called on ``inp``) is an array no one else holds: the layer
    says so, no hook saw it, and it shares no memory with its input."""
    return (m.returns_fresh_output and _plain(m) and isinstance(out, Tensor) and out.data.flags.writeable
            and not np.may_share_memory(out.data, inp.data))


def run_sequential(children: list, names: list, x):
    """``children[-1](...children[0](x))`` with the fusions above."""
    grad = grad_mode._enabled
    scratch = False            # x is the previous step's fresh output, seen by nobody else
    i = 0
    n = len(children)
    while i < n:
        m = children[i]
        prev = children[i - 1] if i > 0 else None
        # The ReLU before this layer: its mask can go into this layer's backward.
        relu_input = grad and _is(prev, ReLU)
        try:
            if isinstance(x, Tensor) and _plain_conv(m):
                out, used = _conv_step(children, i, x, relu_input, grad)
                scratch = _fresh(m, out, x)
            elif isinstance(x, Tensor) and _is(m, MaxPool2d):
                _check_input(m, x)
                _check_size(m, x, m.kernel_size, m.stride, m.padding, m.ceil_mode)
                out, used = pool_ops.MaxPool2d.apply(x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                                     relu_input=relu_input), 1
                scratch = True
            elif isinstance(x, Tensor) and _is(m, ReLU) and np.issubdtype(x.dtype, np.floating):
                nxt = children[i + 1] if i + 1 < n else None
                out = act_ops.ReLU.apply(x, in_place=scratch, grad_premasked=grad and _absorbs_relu_grad(nxt))
                used, scratch = 1, False
            else:
                out, used = m(x), 1
                scratch = _fresh(m, out, x)
        except (ValueError, TypeError) as exc:
            # The layer's own message says what was wrong; the note says where it sits.
            if hasattr(exc, "add_note"):
                exc.add_note(f"  in Sequential layer {names[i]!r} ({type(m).__name__})")
            raise
        x = out
        i += used
    return x
