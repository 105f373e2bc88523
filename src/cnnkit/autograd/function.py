"""Function and its context: one differentiable operation with a hand-written backward.

A Function has two static methods on NumPy arrays:

- ``forward(ctx, *args, **options)`` computes the result from the inputs' arrays and keeps
  on ``ctx`` what the backward will need (``ctx.save_for_backward(...)`` or any attribute);
- ``backward(ctx, *grads)`` receives the gradient of the loss with respect to each output
  and returns one gradient per positional input of ``forward`` (None for inputs that need
  none: ``ctx.needs_input_grad[i]`` says which do).

``Function.apply(*args)`` runs the forward and, when grad mode is on and an input Tensor
requires a gradient, records a ``Node`` in the graph: the Function, its context and an edge
to each input's producer. ``Tensor.backward()`` walks those nodes (``autograd.engine``).

The rules every backward follows (the engine relies on them):

- never write into a gradient it receives, nor into a saved input: both may be shared;
- return new arrays, or views of the gradients it received (the engine copies those before
  adding into them);
- keep dtypes: float32 in, float32 out.

Example, a user's own op (as ``torch.autograd.Function``)::

    class Cube(cnnkit.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 3 * x ** 2

    y = Cube.apply(t)          # t: a cnnkit.Tensor
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import grad_mode

__all__ = ["Function", "FunctionCtx", "Node"]


class FunctionCtx:
    """What a Function's forward hands to its backward.

    Attributes:
        needs_input_grad: one bool per positional input: whether its gradient is wanted.
        needs_grad: True when a graph is recorded (some input needs a gradient); a forward may
            skip saving anything when it is False.
        saved_tensors: the arrays given to ``save_for_backward``.
        grads_owned: set by the engine before backward: per output, whether its gradient
            is an array nobody else holds (the backward may then overwrite it).
    """

    def __init__(self, needs_input_grad: tuple[bool, ...], needs_grad: bool):
        self.needs_input_grad = needs_input_grad
        self.needs_grad = needs_grad
        self._saved: tuple = ()
        self.grads_owned: tuple = ()

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep ``arrays`` for the backward (nothing is kept when no graph is recorded)."""
        if self.needs_grad:
            self._saved = tuple(a.data if _is_tensor(a) else a for a in arrays)

    @property
    def saved_tensors(self) -> tuple:
        return self._saved

    def mark_non_differentiable(self, *args: Any) -> None:
        """Accepted for PyTorch compatibility: integer outputs never require a gradient."""


_TENSOR = None


def _tensor_class():
    """``cnnkit.Tensor``, imported once (the tensor module imports this one)."""
    global _TENSOR
    if _TENSOR is None:
        from .._tensor import Tensor

        _TENSOR = Tensor
    return _TENSOR


def _is_tensor(obj: Any) -> bool:
    return isinstance(obj, _tensor_class())


class Node:
    """One recorded call of a Function: the graph's vertex.

    Attributes:
        function: the Function class (its ``backward`` is called).
        ctx: its context; None once the backward ran (the saved arrays are freed).
        edges: per positional input, where its gradient goes: None (no gradient), a leaf
            Tensor (the gradient is added into ``.grad``) or ``(node, output_index)``.
        shapes, dtypes: of each output, to check gradients and fill in missing ones.
        hooks: per output index, functions called with that output's gradient.
    """

    __slots__ = ("function", "ctx", "edges", "shapes", "dtypes", "hooks", "retained", "__weakref__")

    def __init__(self, function, ctx, edges, outputs):
        self.function = function
        self.ctx = ctx
        self.edges = edges
        self.shapes = tuple(o.shape for o in outputs)
        self.dtypes = tuple(o.dtype for o in outputs)
        self.hooks = None
        self.retained = None

    def name(self) -> str:
        """The Function's name as PyTorch prints it (``ReluBackward``)."""
        return f"{self.function.__name__}Backward"

    @property
    def next_functions(self) -> tuple:
        """((node or leaf tensor or None, output index), ...) per input, as PyTorch's."""
        out = []
        for e in self.edges:
            if e is None:
                out.append((None, 0))
            elif isinstance(e, tuple):
                out.append(e)
            else:
                out.append((e, 0))
        return tuple(out)

    def __repr__(self) -> str:
        return f"<{self.name()}>"


class Function:
    """Base class of every differentiable operation (cnnkit's and a user's own).

    Subclasses define the static methods ``forward(ctx, *args, **options)`` and
    ``backward(ctx, *grads)``, and are called through ``apply``.

    Args (of ``apply``):
        *args: Tensors (their arrays are passed to ``forward``), arrays, numbers or any
            option; only Tensors that require a gradient get one.
        **options: passed to ``forward`` as they are.

    Returns:
        A Tensor (or a tuple of Tensors when ``forward`` returns a tuple); it has a
        ``grad_fn`` when a graph was recorded. Integer outputs never require a gradient.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, *args, **options):  # pragma: no cover - abstract
        raise NotImplementedError("a Function subclass must define forward(ctx, ...)")

    @staticmethod
    def backward(ctx: FunctionCtx, *grads):  # pragma: no cover - abstract
        raise NotImplementedError("a Function subclass must define backward(ctx, *grads)")

    @classmethod
    def apply(cls, *args, **options):
        Tensor = _tensor_class()
        arrays = []
        edges = []
        for a in args:
            if isinstance(a, Tensor):
                arrays.append(a.data)
                edges.append(a._edge() if a.requires_grad else None)
            else:
                arrays.append(a)
                edges.append(None)
        record = grad_mode._enabled and any(e is not None for e in edges)
        needs = tuple(e is not None for e in edges) if record else (False,) * len(edges)
        ctx = FunctionCtx(needs, record)
        out = cls.forward(ctx, *arrays, **options)
        multi = isinstance(out, tuple)
        outs = tuple(np.asarray(o) if not isinstance(o, np.ndarray) else o for o in (out if multi else (out,)))
        if record:
            node = Node(cls, ctx, tuple(edges), outs)
            results = tuple(Tensor._from_node(o, node, i) for i, o in enumerate(outs))
        else:
            results = tuple(Tensor._wrap(o) for o in outs)
        return results if multi else results[0]
