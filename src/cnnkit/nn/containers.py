"""Containers: the chain rule over child modules (there is no autograd engine).

- ``Sequential`` runs children in order and their backward passes in reverse.
- ``Concat`` feeds the same input to parallel branches and joins their outputs along a
  dimension; backward splits the gradient and sums the branches' input gradients.
- ``Residual`` returns ``body(x) + shortcut(x)``; backward adds both input gradients.

``needs_input_grad``: when a container's flag is False (nothing before it needs a gradient,
e.g. the first block of a network or a frozen backbone), it passes the flag on to the
children that receive its input, and its backward returns None. In backward it also skips
children that have no trainable parameter and whose input gradient nobody needs (a frozen
prefix of a ``Sequential``), which makes fine-tuning a frozen backbone cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator

import numpy as np

from .activation import ReLU, ReLU6
from .conv import Conv2d
from .module import Module, is_grad_enabled
from .normalization import BatchNorm2d
from .pooling import MaxPool2d

__all__ = ["Sequential", "Concat", "Residual"]


def _has_trainable(module: Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _backward_child(module: Module, grad: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
    """``module.backward(grad)``; when no input gradient is needed, only parameter
    gradients are computed (and nothing at all when the module is frozen)."""
    if need_input_grad:
        return module.backward(grad)
    if not _has_trainable(module):
        return None
    if not module.needs_input_grad:
        module.backward(grad)
        return None
    module.needs_input_grad = False
    try:
        module.backward(grad)
    finally:
        module.needs_input_grad = True
    return None


def _release_cache(module: Module) -> None:
    """Drop what a leaf layer saved for its backward, once that backward has run.

    Why: as PyTorch frees its graph after ``backward()``, the activations a step kept are
    released layer by layer during the backward pass instead of living on until the next
    forward: the next layers' gradients can reuse that memory (``_recycle``), and nothing
    is held between steps. A second ``backward()`` needs a new forward (the layer says so)."""
    if "_cache" in module.__dict__:
        module.__dict__["_cache"] = None


class _one_call:
    """Set hand-over flags on ``module`` for the length of one call (only the true ones, to
    their values), and clear them afterwards, even when the call raises. The flags Sequential uses:
    ``_input_is_scratch`` (the array received may be overwritten), ``_input_is_rectified``
    (a fused ReLU already clipped it), ``_fuse_relu`` (apply the next ReLU in your own
    output pass), ``_input_is_relu_output`` (fold the backward of the ReLU before you
    into yours; a layer that does so answers by setting ``_relu_grad_folded``) and
    ``_fuse_relu_max_pool`` (a MaxPool2d: apply the next ReLU and that pool yourself, and
    set the pool's cache; answered by setting ``_relu_max_pool_fused``) and
    ``_fold_batch_norm`` (``(bn, cap)``: fold that eval-mode BatchNorm2d and a ReLU cap into
    your output, no gradient wanted; answered by setting ``_batch_norm_folded``)."""

    def __init__(self, module: Module, **flags):
        self.module = module
        self.flags = {name: value for name, value in flags.items() if value is not False and value is not None}

    def __enter__(self):
        for name, value in self.flags.items():
            self.module.__dict__[name] = value

    def __exit__(self, *exc):
        for name in self.flags:
            self.module.__dict__[name] = False


def _takes_scratch(module: Module, is_scratch: bool) -> bool:
    """Whether ``module`` may overwrite the array it receives: the array is scratch, the
    module is an activation that works in place, and no hook observes its input."""
    return is_scratch and module.overwrites_scratch and not module._forward_hooks


def _fusable(producer: Module, consumer: Module) -> bool:
    """A ReLU can be fused into ``producer`` when the producer supports it, the consumer is
    exactly a ReLU that would work in place, and no hook would see the difference."""
    return (producer.fuses_relu and type(consumer) is ReLU and not producer._forward_hooks
            and not consumer._forward_hooks)


def _poolable(conv: Module, relu: Module, pool: Module) -> bool:
    """Whether ``conv -> relu -> pool`` can run as one pass (``nn._conv_pool``): a Conv2d,
    exactly a ReLU and exactly a MaxPool2d, no hook on any of them, and either no gradient
    wanted or a pool in training mode (an eval-mode pool recomputes its winners in
    backward from the full-size input, which the fused pass does not keep)."""
    return (isinstance(conv, Conv2d) and type(relu) is ReLU and type(pool) is MaxPool2d
            and not (conv._forward_hooks or relu._forward_hooks or pool._forward_hooks)
            and (pool.training or not is_grad_enabled()))


def _relu_max_pool_after(children: list, i: int, relu_next: bool) -> tuple[Module | None, int]:
    """(the MaxPool2d that child ``i`` can run in one pass with a ReLU, the ReLU's index),
    or (None, -1). ``relu_next``: child i + 1 is a ReLU fusable into child i.

    Two orders qualify: conv -> ReLU -> pool, and conv -> pool -> ReLU. They compute the
    same values (``max(relu(a), relu(b)) == relu(max(a, b))``), pick the same winner in
    every window whose maximum is positive, and give every other window no gradient (the
    ReLU's mask after the pool; the dead index before it), so one pass serves both."""
    if i + 2 >= len(children):
        return None, -1
    conv, second, third = children[i][1], children[i + 1][1], children[i + 2][1]
    if relu_next and _poolable(conv, second, third):
        return third, i + 1
    if _fusable(conv, third) and _poolable(conv, third, second):
        return second, i + 2
    return None, -1


def _batch_norm_after(children: list, i: int) -> tuple[tuple | None, int]:
    """``((bn, cap), layers)`` when child ``i`` is a Conv2d that can fold the eval-mode
    BatchNorm2d after it, and the ReLU (cap True) or ReLU6 (cap 6.0) after that if any,
    into its output (``Conv2d._fold_batch_norm``); ``layers``: how many children that
    replaces (1 or 2). Else (None, 0). For inference only: the caller checks that no
    gradient is wanted. The BatchNorm must use its running statistics, match the channels
    and the dtype, and no hook may observe the intermediates."""
    if i + 1 >= len(children):
        return None, 0
    conv, bn = children[i][1], children[i + 1][1]
    if not (isinstance(conv, Conv2d) and type(bn) is BatchNorm2d and not bn.training
            and bn.running_mean is not None and bn.num_features == conv.out_channels
            and bn.running_mean.dtype == conv.weight.data.dtype     # else BN casts its input
            and not (conv._forward_hooks or bn._forward_hooks)):
        return None, 0
    act = children[i + 2][1] if i + 2 < len(children) else None
    if act is not None and not act._forward_hooks and type(act) in (ReLU, ReLU6):
        return (bn, True if type(act) is ReLU else 6.0), 2
    return (bn, False), 1


def _foldable(relu: Module, consumer: Module) -> bool:
    """Whether the backward of ``relu`` can be folded into the backward of ``consumer``, the
    layer after it: the consumer supports it, the producer is exactly a ReLU, and no hook
    observes either (the same rule as ``_fusable``)."""
    return (type(relu) is ReLU and consumer.absorbs_relu_grad and not relu._forward_hooks
            and not consumer._forward_hooks)


def _is_private(module: Module, declared_fresh: bool, result, arg) -> bool:
    """Whether ``result`` of ``module`` (called on ``arg``) is an array no one else holds:
    the layer says so, no hook saw it, and it shares no memory with the argument (guards
    against pass-through fast paths)."""
    return (declared_fresh and not module._forward_hooks and isinstance(result, np.ndarray)
            and result.flags.writeable and not np.may_share_memory(result, arg))


def _check_module(owner: str, m, where: str) -> Module:
    if not isinstance(m, Module):
        raise TypeError(f"{owner}: {where} must be a cnnkit.nn.Module, got {type(m).__name__}")
    return m


class _Container(Module):
    """Shared ``needs_input_grad`` handling: the flag is passed on to ``_input_children()``."""

    def _input_children(self) -> list[Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def needs_input_grad(self) -> bool:
        return self.__dict__.get("_needs_input_grad", True)

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        # Propagated both ways: a container that must return an input gradient needs it
        # from the children that saw its input.
        self.__dict__["_needs_input_grad"] = bool(value)
        for child in self._input_children():
            child.needs_input_grad = bool(value)


class Sequential(_Container):
    """Run modules one after another.

    Args:
        *modules: the layers, in order (keys ``0``, ``1``, ... in ``state_dict``), or one
            ``OrderedDict`` name -> module (keys ``name.weight``).

    Shape:
        input of the first module -> output of the last (an empty Sequential is the identity).

    Example::

        model = Sequential(Conv2d(1, 8, 3), ReLU(), Flatten(), Linear(8 * 26 * 26, 10))
        model[0]        # the Conv2d; model[1:] is a Sequential of the rest
        model.append(Softmax(dim=1))
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            for name, m in modules[0].items():
                self.add_module(str(name), _check_module("Sequential", m, f"entry {name!r}"))
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), _check_module("Sequential", m, f"argument {i}"))

    def _input_children(self) -> list[Module]:
        first = next(iter(self), None)
        return [] if first is None else [first]

    # ------------------------------------------------------------------ list-like access
    def _key(self, idx: int) -> str:
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"Sequential: index {idx} is out of range for {n} modules")
        return list(self._modules)[idx % n]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        if isinstance(idx, str):
            return self._modules[idx]
        return self._modules[self._key(int(idx))]

    def __setitem__(self, idx: int, module: Module) -> None:
        key = self._key(int(idx))
        self._modules[key] = _check_module("Sequential", module, "the new item")
        if key == next(iter(self._modules)):
            module.needs_input_grad = self.needs_input_grad

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(m for m in self._modules.values() if m is not None)

    def append(self, module: Module) -> "Sequential":
        """Add ``module`` at the end (key ``str(len(self))``); returns self."""
        self.add_module(str(len(self)), _check_module("Sequential", module, "append() argument"))
        if len(self) == 1:
            module.needs_input_grad = self.needs_input_grad
        return self

    def extend(self, modules: Iterable[Module]) -> "Sequential":
        for m in modules:
            self.append(m)
        return self

    # ------------------------------------------------------------------ running
    def forward(self, x: np.ndarray) -> np.ndarray:
        children = [(name, m) for name, m in self._modules.items() if m is not None]
        x_is_scratch = False  # x is the previous child's fresh output, seen by nobody else
        fused = False         # ... and the ReLU that comes next was already applied to it
        # ReLUs whose backward the next layer folds into its own (backward skips them). Why:
        # the next layer can apply the ReLU's mask while each chunk of its input gradient is
        # in cache (a convolution), or on a quarter of the data (a 2x2 max pool), instead of
        # the ReLU's own pass over the whole gradient (conv4 at batch 64: 4 such passes,
        # 2.4 ms of a 55 ms step).
        folded = set()
        grad_enabled = is_grad_enabled()
        i = 0
        while i < len(children):
            name, m = children[i]
            fuse = i + 1 < len(children) and _fusable(m, children[i + 1][1])
            fold = grad_enabled and i > 0 and _foldable(children[i - 1][1], m)
            # Conv2d -> ReLU -> MaxPool2d in one pass (nn._conv_pool), or Conv2d -> MaxPool2d
            # -> ReLU (LeNet's order): max and ReLU commute, so both are the same pass.
            pool, relu_at = _relu_max_pool_after(children, i, fuse)
            # Inference: an eval-mode BatchNorm2d (and its ReLU / ReLU6) folded into a Conv2d.
            bn_fold, bn_layers = (None, 0) if grad_enabled or pool is not None else _batch_norm_after(children, i)
            inp = x
            try:
                scratch = _takes_scratch(m, x_is_scratch)
                with _one_call(m, _input_is_scratch=scratch, _input_is_rectified=scratch and fused,
                               _fuse_relu=fuse, _input_is_relu_output=fold, _fuse_relu_max_pool=pool,
                               _fold_batch_norm=bn_fold):
                    x = m(x)
            except (ValueError, TypeError) as exc:
                # The layer's own message says what was wrong; the note says where it sits.
                if hasattr(exc, "add_note"):
                    exc.add_note(f"  in Sequential layer {name!r} ({type(m).__name__})")
                raise
            # The layer's answers (a layer that ignores a request leaves them unset).
            if m.__dict__.pop("_relu_grad_folded", False) and fold:
                folded.add(i - 1)
            if m.__dict__.pop("_relu_max_pool_fused", False) and pool is not None:
                # The ReLU and the pool ran inside m; the pool's cache folds the ReLU's backward.
                children[relu_at][1]._cache = None
                if grad_enabled:
                    folded.add(relu_at)
                x_is_scratch, fused = True, False
                i += 3
                continue
            if m.__dict__.pop("_batch_norm_folded", False) and bn_fold is not None:
                for k in range(1, bn_layers + 1):        # they did not run: nothing to keep
                    children[i + k][1]._cache = None
                x_is_scratch, fused = _is_private(m, m.returns_fresh_output, x, inp), False
                i += 1 + bn_layers
                continue
            x_is_scratch = _is_private(m, m.returns_fresh_output, x, inp)
            fused = fuse and x_is_scratch
            i += 1
        self.__dict__["_folded_relu_grads"] = folded
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        children = list(self)
        need = self.needs_input_grad
        start = 0
        if not need:
            # Leading children without trainable parameters need no backward at all.
            while start < len(children) and not _has_trainable(children[start]):
                start += 1
        g = grad_out
        g_is_scratch = False  # g is the next child's fresh input gradient
        folded = self.__dict__.get("_folded_relu_grads", ())
        for i in range(len(children) - 1, start - 1, -1):
            if i in folded:  # the layer after this ReLU already applied its mask
                _release_cache(children[i])
                continue
            child_needs = need or i > start
            g_in = g
            with _one_call(children[i], _input_is_scratch=_takes_scratch(children[i], g_is_scratch)):
                g = _backward_child(children[i], g, child_needs)
            _release_cache(children[i])
            g_is_scratch = _is_private(children[i], children[i].returns_fresh_input_grad, g, g_in)
            if child_needs and g is None and i > 0:
                raise RuntimeError(
                    f"Sequential: layer {list(self._modules)[i]} ({type(children[i]).__name__}) returned "
                    f"no input gradient (its needs_input_grad is False) but earlier layers need one"
                )
        for child in children[:start]:         # skipped: their saved arrays are not needed either
            _release_cache(child)
        return g if need else None


class Concat(_Container):
    """Parallel branches on the same input, outputs concatenated along ``dim``.

    Args:
        *branches: modules applied to the same input (keys ``0``, ``1``, ... in ``state_dict``),
            or one ``OrderedDict`` name -> module.
        dim: the dimension to concatenate along (default 1, channels of NCHW).

    Shape:
        every branch's output must agree on every dimension except ``dim``;
        output size along ``dim`` is the sum of the branches'.

    Backward splits the upstream gradient along ``dim`` and sums the input gradients the
    branches return (the input fed all of them).
    """

    def __init__(self, *branches, dim: int = 1):
        super().__init__()
        if len(branches) == 1 and isinstance(branches[0], (OrderedDict, dict)):
            items = [(str(k), v) for k, v in branches[0].items()]
        else:
            items = [(str(i), b) for i, b in enumerate(branches)]
        if not items:
            raise ValueError("Concat: needs at least one branch")
        for name, b in items:
            self.add_module(name, _check_module("Concat", b, f"branch {name}"))
        self.dim = int(dim)
        self._cache = None

    def _input_children(self) -> list[Module]:
        return list(self)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(m for m in self._modules.values() if m is not None)

    def __getitem__(self, idx: int) -> Module:
        return list(self)[idx]

    def forward(self, x: np.ndarray) -> np.ndarray:
        outs = [b(x) for b in self]
        nd = outs[0].ndim
        if not -nd <= self.dim < nd:
            raise ValueError(f"Concat: dim {self.dim} is out of range for branch outputs with {nd} dimensions")
        axis = self.dim % nd
        ref = outs[0].shape
        for i, o in enumerate(outs):
            if o.ndim != nd or o.shape[:axis] + o.shape[axis + 1:] != ref[:axis] + ref[axis + 1:]:
                shapes = ", ".join(str(o.shape) for o in outs)
                raise ValueError(
                    f"Concat: branch outputs must match except along dim {self.dim}; got shapes {shapes}"
                )
        sizes = [o.shape[axis] for o in outs]
        self._cache = (axis, sizes)
        if nd == 4 and axis == 1 and any(o.transpose(0, 2, 3, 1).flags.c_contiguous for o in outs):
            # The convolution kernels return NCHW views of channels-last memory; joining in
            # that memory keeps the next convolution from copying the result into it again.
            joined = np.concatenate([o.transpose(0, 2, 3, 1) for o in outs], axis=3)
            return joined.transpose(0, 3, 1, 2)
        return np.concatenate(outs, axis=axis)

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        axis, sizes = self._need_cache(self._cache)
        need = self.needs_input_grad
        pieces = np.split(grad_out, np.cumsum(sizes)[:-1], axis=axis)
        total = None
        for branch, g in zip(self, pieces):
            gi = _backward_child(branch, g, need)
            if gi is None:
                continue
            # Never in place: a branch may hand back a view of grad_out (e.g. Identity).
            total = gi if total is None else total + gi
        return total if need else None

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Residual(_Container):
    """``body(x) + shortcut(x)``; the shortcut is the identity when None (ResNet's skip).

    Args:
        body: the main branch.
        shortcut: a module with the same output shape as ``body`` (e.g. a 1x1 Conv2d with
            stride for downsampling), or None for the identity.

    Shape:
        input -> body's output shape (which must equal the shortcut's).

    ``state_dict`` keys are ``body.*`` and ``shortcut.*``.
    """

    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        self.body = _check_module("Residual", body, "body")
        if shortcut is not None:
            self.shortcut = _check_module("Residual", shortcut, "shortcut")
        else:
            self.shortcut = None

    def _input_children(self) -> list[Module]:
        return list(self.children())

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self.body(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if out.shape != skip.shape:
            which = "input" if self.shortcut is None else "shortcut output"
            raise ValueError(
                f"Residual: body output shape {out.shape} does not match {which} shape {skip.shape}"
                + ("; pass a shortcut module (e.g. a 1x1 Conv2d) to change the shape"
                   if self.shortcut is None else "")
            )
        return out + skip

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        need = self.needs_input_grad
        g_body = _backward_child(self.body, grad_out, need)
        if self.shortcut is None:
            g_skip = grad_out if need else None
        else:
            g_skip = _backward_child(self.shortcut, grad_out, need)
        if not need:
            return None
        return g_body + g_skip  # a new array: grad_out is never written
