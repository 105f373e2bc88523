"""Run-time fusion for layers called one by one in a ``forward()``.

Written the way PyTorch users write it,

    x = F.max_pool2d(F.relu(self.conv1(x)), 2)

is three calls, each returning before the next is known, so a Sequential's planner
(``nn.fusion``) cannot see them together. A convolution called inside another module's
``forward()`` therefore returns a ``DeferredConv``: a Tensor that knows its shape, dtype and
whether it requires a gradient, but computes its values (and records its node of the graph)
when they are first needed. A ReLU, a max pool or an average pool applied to it before then
joins its plan instead of running, and the plan runs as one of the fused Functions of
``ops.conv``, with its own backward — the same passes a Sequential uses:

    plan                          runs as
    conv                          Conv2d
    conv, relu                    Conv2d(relu=True): the ReLU in the output pass
    conv, relu, max pool          Conv2dReluMaxPool (also conv, max pool, relu: they commute)
    conv, relu, avg pool          Conv2dReluAvgPool (without gradients only)
    conv, max pool                Conv2d, then MaxPool2d

When the values are computed:

- at the first use of ``.data`` or ``.grad_fn``: any other operation, ``backward()``,
  ``print``, ``.numpy()``, a hook that reads it, the next layer;
- when the outermost module call returns (``model(x)`` never hands out a deferred tensor);
- before any in-place Tensor write (``add_``, ``x[...] = v``, ...), so that changing an
  input after the call cannot change the result.

A deferred tensor is computed from the arrays it was called with. Changing those arrays
in place with NumPy (``w.data[...] = 0``) inside a ``forward()`` before the convolution's
output is used would change the result, as it would with any lazily computed value.

No convolution runs twice: when a step joins the plan of a tensor that someone still holds
(``y = conv(x); z = F.relu(y); z + y``), that tensor is computed on its own first and the
step runs on its values. Whether someone else holds it is read from its reference count,
calibrated at import against a tensor held by the plan alone.

Values: each plan gives the layers' values one by one up to the float32 rounding of the
convolution's sums (the fused passes run the GEMM in chunks of the batch), and the same
gradients: each fused Function's backward is the chain rule through its steps. A plan runs
in the grad mode its convolution was called in; a step called in another mode does not join.
"""

from __future__ import annotations

import sys
import threading
import weakref

import numpy as np

from ..autograd import grad_mode
from ..ops import activation as act_ops
from ..ops import conv as conv_ops
from ..ops import pool as pool_ops
from .. import _tensor
from .._tensor import Size, Tensor
from . import _kernels as K

__all__ = ["DeferredConv", "conv2d", "then_relu", "then_max_pool", "then_avg_pool", "settle", "enter_module",
           "leave_module"]

_DATA = Tensor.__dict__["data"]      # Tensor's own storage slots, behind the properties below
_GRAD_FN = Tensor.__dict__["grad_fn"]
_INDEX = Tensor.__dict__["_output_index"]
_RELU = ("relu",)


class _State(threading.local):
    """Per thread: how deep module calls are nested, and the deferred tensors created
    since the outermost one began (weak references, in creation order)."""

    depth = 0

    def __init__(self):
        self.created = []


_state = _State()


class DeferredConv(Tensor):
    """A convolution's output (and the ReLU / pool steps that joined it) whose values are
    computed when first needed. Behaves as a Tensor everywhere: ``.data`` computes it.

    Shape:
        the output of the last step of its plan; known before anything is computed.
    """

    __slots__ = ("_conv", "_steps", "_source", "_shape", "_dtype", "_with_grad")

    @property
    def data(self) -> np.ndarray:
        arr = _DATA.__get__(self, DeferredConv)
        if arr is None:
            arr = self._compute()
        return arr

    @data.setter
    def data(self, value) -> None:
        self._conv = self._source = None
        self._shape, self._dtype = value.shape, value.dtype
        _DATA.__set__(self, value)

    @property
    def grad_fn(self):
        if _DATA.__get__(self, DeferredConv) is None:
            self._compute()
        return _GRAD_FN.__get__(self, DeferredConv)

    @grad_fn.setter
    def grad_fn(self, value) -> None:
        if _DATA.__get__(self, DeferredConv) is None:    # e.g. detach_(): compute first
            self._compute()
        _GRAD_FN.__set__(self, value)

    @property
    def shape(self):
        return Size(self._shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def size(self, dim: int | None = None):
        return Size(self._shape) if dim is None else self._shape[dim]

    @property
    def pending(self) -> bool:
        """True until the values are computed."""
        return _DATA.__get__(self, DeferredConv) is None

    def _compute(self) -> np.ndarray:
        # The nearest earlier tensor of this plan that is computed, or that someone besides
        # the plan holds (it is computed on its own and the later steps run on its values).
        anc = self._source
        while anc is not None and _DATA.__get__(anc, DeferredConv) is None and _refs(anc) <= _ONLY_THE_PLAN:
            anc = anc._source
        previous = grad_mode._enabled
        grad_mode._enabled = self._with_grad      # the mode the convolution was called in
        try:
            if anc is None:
                out = _run_plan(self._conv, self._steps)
            else:
                out = anc
                for step in self._steps[len(anc._steps):]:
                    out = _run_step(out, step)
        finally:
            grad_mode._enabled = previous
        # This tensor stands for the plan's output: its values and its place in the graph.
        self._conv = self._source = None
        _GRAD_FN.__set__(self, out.grad_fn)
        _INDEX.__set__(self, out._output_index)
        self.requires_grad = out.requires_grad
        _DATA.__set__(self, out.data)
        return out.data


def _refs(obj) -> int:
    return sys.getrefcount(obj)


class _Link:
    __slots__ = ("_source",)


def _calibrate() -> int:
    """What ``_refs`` reads inside ``_compute`` for a tensor that only the plan holds: the
    later tensor's ``_source`` and the loop's variable (the same code shape as there)."""
    later = _Link()
    later._source = _Link()
    anc = later._source
    return _refs(anc)


_ONLY_THE_PLAN = _calibrate()


# ---------------------------------------------------------------------------------- running a plan
def _run_plan(conv: tuple, steps: tuple) -> Tensor:
    """The fused Function of ``ops.conv`` for this plan (table in the module docstring)."""
    kinds = tuple(s[0] for s in steps)
    if kinds in ((), ("relu",)):
        return conv_ops.Conv2d.apply(*conv, relu=bool(kinds))
    if kinds in (("relu", "max"), ("max", "relu")):
        _, kernel, stride, padding, ceil_mode = steps[kinds.index("max")]
        return conv_ops.Conv2dReluMaxPool.apply(*conv, kernel, stride, padding, ceil_mode)
    if kinds == ("relu", "avg"):
        return conv_ops.Conv2dReluAvgPool.apply(*conv, *steps[1][1:])
    # (max,): no fused form without a ReLU
    out = conv_ops.Conv2d.apply(*conv)
    for step in steps:
        out = _run_step(out, step)
    return out


def _run_step(x: Tensor, step: tuple) -> Tensor:
    """One step on a computed tensor, as its layer would run it."""
    if step[0] == "relu":
        return act_ops.ReLU.apply(x)
    if step[0] == "max":
        return pool_ops.MaxPool2d.apply(x, *step[1:])
    return pool_ops.AvgPool2d.apply(x, *step[1:])


# ---------------------------------------------------------------------------------- building plans
def _new(conv: tuple, steps: tuple, source, shape: tuple, dtype, with_grad: bool,
         requires_grad: bool) -> DeferredConv:
    t = DeferredConv.__new__(DeferredConv)
    _DATA.__set__(t, None)
    _GRAD_FN.__set__(t, None)
    t._grad = None
    t._output_index = 0
    t._hooks = None
    t.requires_grad = requires_grad
    t._conv, t._steps, t._source, t._shape, t._dtype = conv, steps, source, tuple(shape), dtype
    t._with_grad = with_grad
    _state.created.append(weakref.ref(t))
    return t


def conv2d(x: Tensor, weight: Tensor, bias, stride, pads, dilation, groups: int, out_hw,
           min_depth: int) -> DeferredConv | None:
    """A deferred ``conv2d`` when fusion may follow: called at least ``min_depth`` module
    calls deep (so the outermost call's end computes it), inputs of one float dtype. None:
    run it now."""
    if _state.depth < min_depth:
        return None
    dtype = x.dtype
    if weight.dtype != dtype or (bias is not None and bias.dtype != dtype):
        return None
    x.data                         # an input still deferred is computed now: plans do not nest
    with_grad = grad_mode._enabled
    requires_grad = with_grad and (x.requires_grad or weight.requires_grad
                                   or (bias is not None and bias.requires_grad))
    if with_grad:
        conv = (x, weight, bias, stride, pads, dilation, groups)         # the graph's edges
    else:
        conv = (x.data, weight.data, None if bias is None else bias.data, stride, pads, dilation, groups)
    return _new(conv, (), None, (x.shape[0], weight.shape[0]) + tuple(out_hw), dtype, with_grad, requires_grad)


def _pending(x) -> bool:
    return (type(x) is DeferredConv and _DATA.__get__(x, DeferredConv) is None
            and x._with_grad == grad_mode._enabled)


def then_relu(x) -> DeferredConv | None:
    """``relu(x)`` joined to x's plan, or None when it must run now."""
    if not _pending(x) or "relu" in (s[0] for s in x._steps) or (x._steps and x._steps[-1][0] != "max"):
        return None
    return _new(x._conv, x._steps + (_RELU,), x, x._shape, x._dtype, x._with_grad, x.requires_grad)


def _pooled_shape(x: DeferredConv, kernel, stride, padding, ceil_mode) -> tuple:
    n, c, h, w = x._shape
    return (n, c, K.pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode),
            K.pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode))


def then_max_pool(x, kernel, stride, padding, ceil_mode) -> DeferredConv | None:
    """``max_pool2d(x)`` (arguments already checked) joined to x's plan, or None."""
    if not _pending(x) or (x._steps and x._steps != (_RELU,)):
        return None
    step = ("max", kernel, stride, padding, bool(ceil_mode))
    return _new(x._conv, x._steps + (step,), x, _pooled_shape(x, kernel, stride, padding, ceil_mode), x._dtype,
                x._with_grad, x.requires_grad)


def then_avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad) -> DeferredConv | None:
    """``avg_pool2d(x)`` joined to x's plan when a ReLU is its last step (the one fused
    form, without gradients only), or None."""
    if not _pending(x) or x._steps != (_RELU,) or x._with_grad:
        return None
    step = ("avg", kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))
    return _new(x._conv, x._steps + (step,), x, _pooled_shape(x, kernel, stride, padding, ceil_mode), x._dtype,
                False, False)


# ---------------------------------------------------------------------------------- when values are computed
def settle() -> None:
    """Compute every deferred tensor of this thread that is still held, newest first (so a
    later step's plan runs fused before its earlier tensors are looked at)."""
    created = _state.created
    if not created:
        return
    _state.created = []
    for ref in reversed(created):
        t = ref()
        if t is not None and _DATA.__get__(t, DeferredConv) is None:
            t._compute()


def enter_module() -> None:
    _state.depth += 1


def leave_module(failed: bool = False) -> None:
    """End of a module call: the outermost one computes what is still deferred, unless the
    call raised (then nothing more is computed: the error is what the caller gets, and a
    tensor still held is computed when it is used)."""
    _state.depth -= 1
    if _state.depth == 0 and _state.created:
        if failed:
            _state.created = []
        else:
            settle()


_tensor._settle_deferred = settle   # in-place Tensor writes come after the deferred work
