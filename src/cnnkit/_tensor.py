"""Tensor: an array, its gradient and the node that produced it.

A Tensor wraps a NumPy array (``.data``, which optimizers and kernels read and write in
place) and takes part in the graph: an operation on Tensors that require a gradient is a
``Function`` call that records a node (``.grad_fn``); ``backward()`` walks those nodes and
adds each leaf's gradient into its ``.grad`` (a Tensor).

The names and semantics are PyTorch's (``view``, ``size(0)``, ``sum(dim, keepdim)``,
``item()``, ``to(device)``, ``detach()``), with one difference worth knowing: ``.data`` is
the NumPy array itself, as in DeZero and Chainer, not a Tensor.
"""

from __future__ import annotations

import numbers
import weakref
from typing import Any, Iterator

import numpy as np

from .autograd import grad_mode
from ._device import device as _device, parse_device, check_device

__all__ = ["Tensor", "DEFAULT_DTYPE"]

DEFAULT_DTYPE = np.dtype(np.float32)


def _is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _ops():
    from .ops import elementwise, reduction, shape

    return elementwise, reduction, shape


def _operand(other, like: "Tensor"):
    """A Python number stays a number (NumPy then keeps the Tensor's dtype); anything else
    that is not a Tensor becomes an array."""
    if isinstance(other, Tensor) or isinstance(other, numbers.Number):
        return other
    arr = np.asarray(other)
    if _is_float(arr.dtype) and _is_float(like.dtype) and arr.dtype != like.dtype and arr.ndim == 0:
        arr = arr.astype(like.dtype)
    return arr


def _numpy_names(method):
    """Accept NumPy's keyword names too (``np.sum(t)`` calls ``t.sum(axis=..., out=None)``):
    ``axis`` is ``dim``, ``keepdims`` is ``keepdim``; ``out`` must be None."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, axis=None, keepdims=None, out=None, **kwargs):
        if out is not None or "initial" in kwargs or "where" in kwargs:
            # NumPy-only options: NumPy computes it on the array (no gradient).
            np_kwargs = {k: kwargs[k] for k in ("initial", "where", "dtype", "ddof") if k in kwargs}
            result = getattr(np, method.__name__)(self.data, axis=axis if axis is not None else kwargs.get("dim"),
                                                  keepdims=bool(keepdims), out=out, **np_kwargs)
            return result if out is not None else Tensor._wrap(np.asarray(result))
        if axis is not None:
            kwargs["dim"] = axis
        if keepdims is not None:
            kwargs["keepdim"] = keepdims
        return method(self, *args, **kwargs)

    return wrapper


def _dims(args) -> tuple[int, ...]:
    """``view(2, 3)`` and ``view((2, 3))`` alike."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(int(a) for a in args)


def _settle_deferred() -> None:
    """Before an in-place write: compute the convolutions deferred so far (``nn.deferred``
    replaces this no-op when it is imported), so a write into one of their inputs comes
    after them, as the program says."""


class Tensor:
    """An n-dimensional array that records the operations applied to it.

    Args:
        data: an array, a (nested) list or a number. Python floats become float32 and
            Python ints int64, as in PyTorch; an array keeps its dtype.
        requires_grad: record operations on it so that ``backward()`` fills ``.grad``.
        dtype: convert to this dtype.

    Attributes:
        data (np.ndarray): the values.
        grad (Tensor | None): the accumulated gradient (leaves only).
        grad_fn: the node that produced this tensor (None for a leaf).
        requires_grad (bool): whether gradients flow to it.

    Shape:
        any; ``shape`` / ``size()`` give it.
    """

    __slots__ = ("data", "requires_grad", "_grad", "grad_fn", "_output_index", "_hooks", "__weakref__")
    # Binary operators with an ndarray on the left come back to the Tensor.
    __array_priority__ = 1000

    def __init__(self, data: Any = None, requires_grad: bool = False, dtype=None):
        arr = _to_array(data, dtype)
        self.data = arr
        self._grad = None
        self.grad_fn = None
        self._output_index = 0
        self._hooks = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def _wrap(cls, arr: np.ndarray) -> "Tensor":
        t = Tensor.__new__(Tensor)
        t.data = arr
        t._grad = None
        t.grad_fn = None
        t._output_index = 0
        t._hooks = None
        t.requires_grad = False
        return t

    @classmethod
    def _from_node(cls, arr: np.ndarray, node, index: int) -> "Tensor":
        t = cls._wrap(arr)
        if _is_float(arr.dtype) or np.issubdtype(arr.dtype, np.complexfloating):
            t.grad_fn = node
            t._output_index = index
            t.requires_grad = True
        return t

    def _edge(self):
        """Where a gradient for this tensor goes: its node and output index, or itself (a leaf)."""
        return self if self.grad_fn is None else (self.grad_fn, self._output_index)

    # ------------------------------------------------------------------ gradient
    @property
    def grad(self) -> "Tensor | None":
        return self._grad

    @grad.setter
    def grad(self, value) -> None:
        if value is None or isinstance(value, Tensor):
            self._grad = value
        else:
            self._grad = Tensor._wrap(np.asarray(value))

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place (leaves of a floating dtype only); returns self."""
        if requires_grad and not _is_float(self.data.dtype):
            raise RuntimeError(f"only Tensors of a floating dtype can require gradients, got {self.data.dtype}")
        if not requires_grad and self.grad_fn is not None:
            raise RuntimeError("requires_grad_(False) is for leaves; use detach() on a computed tensor")
        self.requires_grad = bool(requires_grad)
        return self

    def backward(self, gradient=None, retain_graph: bool = False, create_graph: bool = False) -> None:
        """Add the gradient of this tensor with respect to every leaf into their ``.grad``.

        Args:
            gradient: d(loss)/d(self), of this tensor's shape; may be omitted for a tensor
                with one element (the gradient is then 1).
            retain_graph: keep the saved arrays so that backward can run again.
            create_graph: not supported (no higher-order gradients).
        """
        from .autograd.engine import run_backward

        if create_graph:
            raise NotImplementedError("create_graph=True: higher-order gradients are not supported")
        if not self.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs (this tensor has shape "
                    f"{self.shape}); pass gradient= of the same shape"
                )
            g = np.ones(self.data.shape, self.data.dtype)
        else:
            g = np.asarray(_data(gradient))
            if g.shape != self.data.shape:
                raise RuntimeError(f"backward: gradient of shape {g.shape} for a tensor of shape {self.data.shape}")
            if g.dtype != self.data.dtype:
                g = g.astype(self.data.dtype)
        run_backward([self], [g], retain_graph=retain_graph)

    def retain_grad(self) -> None:
        """Keep the gradient of this computed tensor in ``.grad`` during backward."""
        if self.grad_fn is None:
            return
        node = self.grad_fn
        if node.retained is None:
            node.retained = {}
        node.retained[self._output_index] = weakref.ref(self)

    def register_hook(self, hook):
        """Call ``hook(grad)`` when this tensor's gradient is computed; a returned tensor
        replaces the gradient. Returns a handle with ``remove()``."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        if self.grad_fn is None:
            if self._hooks is None:
                self._hooks = []
            hooks = self._hooks
        else:
            node = self.grad_fn
            if node.hooks is None:
                node.hooks = {}
            hooks = node.hooks.setdefault(self._output_index, [])
        hooks.append(hook)
        return _RemoveHandle(hooks, hook)

    def detach(self) -> "Tensor":
        """The same array, out of the graph (no copy)."""
        return Tensor._wrap(self.data)

    def detach_(self) -> "Tensor":
        self.grad_fn = None
        self.requires_grad = False
        return self

    # ------------------------------------------------------------------ attributes
    @property
    def shape(self) -> tuple[int, ...]:
        return Size(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> _device:
        return _device("cpu")

    @property
    def is_cuda(self) -> bool:
        return False

    @property
    def T(self) -> "Tensor":
        return self.permute(*reversed(range(self.ndim)))

    def size(self, dim: int | None = None):
        """The shape, or its length along ``dim``."""
        if dim is None:
            return Size(self.data.shape)
        return self.data.shape[dim]

    def dim(self) -> int:
        return self.data.ndim

    def numel(self) -> int:
        return int(self.data.size)

    nelement = numel

    def element_size(self) -> int:
        return self.data.itemsize

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self) -> Iterator["Tensor"]:
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        for i in range(self.data.shape[0]):
            yield self[i]

    # ------------------------------------------------------------------ conversion
    def numpy(self, force: bool = False) -> np.ndarray:
        """The array itself (shares memory). Refuses a tensor that requires grad, as PyTorch."""
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on a Tensor that requires grad. Use tensor.detach().numpy() instead.")
        return self.data

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            return self.data.astype(dtype)
        if copy:
            return self.data.copy()
        return self.data

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # np.exp(t), ndarray + t: differentiable where a Function exists, else plain arrays.
        if method == "__call__" and not kwargs.get("out"):
            name = ufunc.__name__
            if name in _BINARY_UFUNCS and len(inputs) == 2:
                return _binary(_BINARY_UFUNCS[name], *inputs)
            if name in _UNARY_UFUNCS and len(inputs) == 1:
                return getattr(inputs[0], _UNARY_UFUNCS[name])()
        raw = [_data(i) for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(_data(o) for o in kwargs["out"])
        result = getattr(ufunc, method)(*raw, **kwargs)
        if "out" in kwargs:
            return inputs[0] if kwargs["out"][0] is _data(inputs[0]) else kwargs["out"][0]
        if isinstance(result, tuple):
            return tuple(Tensor._wrap(np.asarray(r)) for r in result)
        return Tensor._wrap(np.asarray(result))

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"only one element tensors can be converted to Python scalars (shape {self.shape})")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.data.tolist()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if not np.issubdtype(self.data.dtype, np.integer) or self.data.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with more than one value is ambiguous (shape {self.shape})")
        return bool(self.item())

    def __format__(self, spec: str) -> str:
        if self.data.size == 1 and self.data.ndim == 0:
            return format(self.item(), spec)
        return format(repr(self), spec)

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", precision=4, prefix="tensor(")
        extra = ""
        if self.data.dtype not in (np.float32, np.int64, np.bool_):
            extra += f", dtype=cnnkit.{self.data.dtype}"
        if self.grad_fn is not None:
            extra += f", grad_fn=<{self.grad_fn.name()}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    __hash__ = object.__hash__

    def to(self, *args, **kwargs) -> "Tensor":
        """``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or ``to(other_tensor)``.
        Only the CPU is there: another device is an error."""
        dtype = kwargs.get("dtype")
        for a in list(args) + [kwargs.get("device")]:
            if a is None or isinstance(a, bool):
                continue
            if isinstance(a, Tensor):
                dtype = a.dtype
            elif isinstance(a, (str, _device)):
                check_device(parse_device(a))
            else:
                dtype = a
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            return self.type(dtype)
        return self

    def cpu(self) -> "Tensor":
        return self

    def cuda(self, *args, **kwargs):
        check_device(_device("cuda"))

    def type(self, dtype=None):
        if dtype is None:
            return f"cnnkit.{self.data.dtype}"
        _, _, shape = _ops()
        dtype = np.dtype(dtype)
        if dtype == self.data.dtype:
            return self
        if self.requires_grad and _is_float(dtype):
            return shape.Cast.apply(self, dtype)
        return Tensor._wrap(self.data.astype(dtype))

    def type_as(self, other: "Tensor") -> "Tensor":
        return self.type(other.dtype)

    def float(self) -> "Tensor":
        return self.type(np.float32)

    def double(self) -> "Tensor":
        return self.type(np.float64)

    def half(self) -> "Tensor":
        return self.type(np.float16)

    def long(self) -> "Tensor":
        return self.type(np.int64)

    def int(self) -> "Tensor":
        return self.type(np.int32)

    def bool(self) -> "Tensor":
        return self.type(np.bool_)

    def clone(self) -> "Tensor":
        """A copy that stays in the graph (its gradient flows back to self)."""
        if self.requires_grad:
            return _ops()[2].Clone.apply(self)
        return Tensor._wrap(self.data.copy())

    def contiguous(self) -> "Tensor":
        if self.data.flags.c_contiguous:
            return self
        if self.requires_grad:
            return _ops()[2].Clone.apply(self)
        return Tensor._wrap(np.ascontiguousarray(self.data))

    def is_contiguous(self) -> bool:
        return bool(self.data.flags.c_contiguous)

    # ------------------------------------------------------------------ shape
    def view(self, *shape) -> "Tensor":
        if len(shape) == 1 and not isinstance(shape[0], (tuple, list, int, np.integer)):
            return self.type(shape[0])              # view(dtype)
        return self.reshape(*shape)

    def reshape(self, *shape) -> "Tensor":
        dims = _dims(shape)
        target = _resolve_shape(dims, self.numel())
        if not self.requires_grad or not grad_mode._enabled:
            return Tensor._wrap(self.data.reshape(target))
        _, _, shape_ops = _ops()
        return shape_ops.Reshape.apply(self, target)

    def view_as(self, other: "Tensor") -> "Tensor":
        return self.reshape(other.shape)

    def reshape_as(self, other: "Tensor") -> "Tensor":
        return self.reshape(other.shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        from .nn import functional as F

        return F.flatten(self, start_dim, end_dim)

    def permute(self, *dims) -> "Tensor":
        axes = tuple(d % max(self.ndim, 1) for d in _dims(dims))
        if sorted(axes) != list(range(self.ndim)):
            raise RuntimeError(f"permute: {list(_dims(dims))} is not a permutation of {self.ndim} dimensions")
        _, _, shape = _ops()
        return shape.Permute.apply(self, axes)

    def transpose(self, dim0: int, dim1: int) -> "Tensor":
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(*axes)

    def t(self) -> "Tensor":
        return self.transpose(0, 1) if self.ndim == 2 else self

    def squeeze(self, dim=None) -> "Tensor":
        if dim is None:
            return self.reshape(tuple(s for s in self.data.shape if s != 1))
        dims = {d % max(self.ndim, 1) for d in ((dim,) if isinstance(dim, int) else dim)}
        return self.reshape(tuple(s for i, s in enumerate(self.data.shape) if not (i in dims and s == 1)))

    def unsqueeze(self, dim: int) -> "Tensor":
        d = dim % (self.ndim + 1)
        shape = list(self.data.shape)
        shape.insert(d, 1)
        return self.reshape(tuple(shape))

    def expand(self, *sizes) -> "Tensor":
        dims = _dims(sizes)
        lead = len(dims) - self.ndim
        target = tuple(self.data.shape[i - lead] if s == -1 else s for i, s in enumerate(dims))
        _, _, shape = _ops()
        return shape.Expand.apply(self, target)

    def expand_as(self, other: "Tensor") -> "Tensor":
        return self.expand(other.shape)

    def __getitem__(self, index) -> "Tensor":
        index = _index(index)
        if not self.requires_grad or not grad_mode._enabled:
            return Tensor._wrap(self.data[index])
        _, _, shape = _ops()
        return shape.GetItem.apply(self, index)

    def __setitem__(self, index, value) -> None:
        if self.requires_grad and grad_mode._enabled:
            raise RuntimeError("in-place assignment into a tensor that requires grad; do it under no_grad()")
        _settle_deferred()
        self.data[_index(index)] = _data(value)

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other):
        return _binary("Add", self, other)

    def __radd__(self, other):
        return _binary("Add", other, self)

    def __sub__(self, other):
        return _binary("Sub", self, other)

    def __rsub__(self, other):
        return _binary("Sub", other, self)

    def __mul__(self, other):
        return _binary("Mul", self, other)

    def __rmul__(self, other):
        return _binary("Mul", other, self)

    def __truediv__(self, other):
        return _binary("Div", self, other)

    def __rtruediv__(self, other):
        return _binary("Div", other, self)

    def __pow__(self, other):
        return _binary("Pow", self, other)

    def __rpow__(self, other):
        return _binary("Pow", other, self)

    def __matmul__(self, other):
        from .ops.linear import MatMul

        return MatMul.apply(self, _as_tensor_operand(other))

    def __rmatmul__(self, other):
        from .ops.linear import MatMul

        return MatMul.apply(_as_tensor_operand(other), self)

    def __neg__(self):
        elementwise, _, _ = _ops()
        return elementwise.Neg.apply(self)

    def __pos__(self):
        return self

    def __floordiv__(self, other):
        return Tensor._wrap(np.floor_divide(self.data, _data(other)))

    def __mod__(self, other):
        return Tensor._wrap(np.mod(self.data, _data(other)))

    def __rmod__(self, other):
        return Tensor._wrap(np.mod(_data(other), self.data))

    def __abs__(self):
        return self.abs()

    def __invert__(self):
        return Tensor._wrap(np.invert(self.data))

    def __and__(self, other):
        return Tensor._wrap(np.logical_and(self.data, _data(other)) if self.data.dtype == bool
                            else np.bitwise_and(self.data, _data(other)))

    def __or__(self, other):
        return Tensor._wrap(np.logical_or(self.data, _data(other)) if self.data.dtype == bool
                            else np.bitwise_or(self.data, _data(other)))

    # In-place updates (optimizers, init, counters): on the array, never in the graph.
    def _inplace(self, op, other) -> "Tensor":
        if self.requires_grad and grad_mode._enabled:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation; "
                               "do it under no_grad()")
        _settle_deferred()
        op(self.data, _data(other), out=self.data, casting="unsafe")
        return self

    def __iadd__(self, other):
        return self._inplace(np.add, other)

    def __isub__(self, other):
        return self._inplace(np.subtract, other)

    def __imul__(self, other):
        return self._inplace(np.multiply, other)

    def __itruediv__(self, other):
        return self._inplace(np.true_divide, other)

    def add_(self, other, alpha=1):
        return self._inplace(np.add, _data(other) * alpha if alpha != 1 else other)

    def sub_(self, other, alpha=1):
        return self._inplace(np.subtract, _data(other) * alpha if alpha != 1 else other)

    def mul_(self, other):
        return self._inplace(np.multiply, other)

    def div_(self, other):
        return self._inplace(np.true_divide, other)

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        if self.requires_grad and grad_mode._enabled:
            raise RuntimeError("in-place fill of a tensor that requires grad; do it under no_grad()")
        _settle_deferred()
        self.data[...] = _data(value)
        return self

    def copy_(self, src):
        return self.fill_(np.asarray(_data(src)).astype(self.data.dtype, copy=False))

    def clamp_(self, min=None, max=None):
        _settle_deferred()
        np.clip(self.data, min, max, out=self.data)
        return self

    # ------------------------------------------------------------------ comparisons (no gradient)
    def _compare(self, op, other) -> "Tensor":
        return Tensor._wrap(op(self.data, _data(other)))

    def __eq__(self, other):  # type: ignore[override]
        return self._compare(np.equal, other)

    def __ne__(self, other):  # type: ignore[override]
        return self._compare(np.not_equal, other)

    def __lt__(self, other):
        return self._compare(np.less, other)

    def __le__(self, other):
        return self._compare(np.less_equal, other)

    def __gt__(self, other):
        return self._compare(np.greater, other)

    def __ge__(self, other):
        return self._compare(np.greater_equal, other)

    def eq(self, other):
        return self.__eq__(other)

    def ne(self, other):
        return self.__ne__(other)

    def lt(self, other):
        return self.__lt__(other)

    def le(self, other):
        return self.__le__(other)

    def gt(self, other):
        return self.__gt__(other)

    def ge(self, other):
        return self.__ge__(other)

    def equal(self, other) -> bool:
        return bool(np.array_equal(self.data, _data(other)))

    def allclose(self, other, rtol=1e-05, atol=1e-08) -> bool:
        return bool(np.allclose(self.data, _data(other), rtol=rtol, atol=atol))

    @_numpy_names
    def all(self, dim=None, keepdim: bool = False):
        return Tensor._wrap(np.asarray(self.data.all(axis=dim, keepdims=keepdim)))

    @_numpy_names
    def any(self, dim=None, keepdim: bool = False):
        return Tensor._wrap(np.asarray(self.data.any(axis=dim, keepdims=keepdim)))

    def isnan(self):
        return Tensor._wrap(np.isnan(self.data))

    def isfinite(self):
        return Tensor._wrap(np.isfinite(self.data))

    # ------------------------------------------------------------------ maths
    def add(self, other, alpha=1):
        return self + (other * alpha if alpha != 1 else other)

    def sub(self, other, alpha=1):
        return self - (other * alpha if alpha != 1 else other)

    def mul(self, other):
        return self * other

    def div(self, other):
        return self / other

    def pow(self, other):
        return self ** other

    def matmul(self, other):
        return self @ other

    def mm(self, other):
        return self @ other

    def exp(self):
        return _ops()[0].Exp.apply(self)

    def log(self):
        return _ops()[0].Log.apply(self)

    def sqrt(self):
        return _ops()[0].Sqrt.apply(self)

    def abs(self):
        return _ops()[0].Abs.apply(self)

    def clamp(self, min=None, max=None):
        return _ops()[0].Clamp.apply(self, min, max)

    clip = clamp

    def sign(self):
        return Tensor._wrap(np.sign(self.data))

    def relu(self):
        from .nn import functional as F

        return F.relu(self)

    def sigmoid(self):
        from .nn import functional as F

        return F.sigmoid(self)

    def tanh(self):
        from .nn import functional as F

        return F.tanh(self)

    def softmax(self, dim):
        from .nn import functional as F

        return F.softmax(self, dim)

    def log_softmax(self, dim):
        from .nn import functional as F

        return F.log_softmax(self, dim)

    # ------------------------------------------------------------------ reductions
    @_numpy_names
    def sum(self, dim=None, keepdim: bool = False, dtype=None):
        t = self if dtype is None else self.type(dtype)
        return _ops()[1].Sum.apply(t, dim, keepdim)

    @_numpy_names
    def mean(self, dim=None, keepdim: bool = False, dtype=None):
        t = self if dtype is None else self.type(dtype)
        if not _is_float(t.dtype):
            raise RuntimeError(f"mean(): expected a floating tensor, got {t.dtype}; call .float() first")
        return _ops()[1].Mean.apply(t, dim, keepdim)

    @_numpy_names
    def var(self, dim=None, keepdim: bool = False, unbiased: bool = True, correction=None):
        corr = (1 if unbiased else 0) if correction is None else correction
        return _ops()[1].Var.apply(self, dim, keepdim, corr)

    @_numpy_names
    def std(self, dim=None, keepdim: bool = False, unbiased: bool = True, correction=None):
        return self.var(dim, keepdim, unbiased, correction).sqrt()

    def _extreme(self, dim, keepdim, largest):
        reduction = _ops()[1]
        if dim is None:
            return reduction.Extreme.apply(self, None, False, largest)
        if isinstance(dim, Tensor):                # max(a, b): elementwise
            return _binary("Maximum" if largest else "Minimum", self, dim)
        values, indices = reduction.MaxAlong.apply(self, dim, keepdim, largest)
        return _MinMax(values, indices)

    @_numpy_names
    def max(self, dim=None, keepdim: bool = False):
        """The largest value, or ``(values, indices)`` along ``dim``."""
        return self._extreme(dim, keepdim, True)

    @_numpy_names
    def min(self, dim=None, keepdim: bool = False):
        return self._extreme(dim, keepdim, False)

    def amax(self, dim=None, keepdim: bool = False):
        return _ops()[1].Extreme.apply(self, dim, keepdim, True)

    def amin(self, dim=None, keepdim: bool = False):
        return _ops()[1].Extreme.apply(self, dim, keepdim, False)

    @_numpy_names
    def argmax(self, dim=None, keepdim: bool = False):
        return Tensor._wrap(_arg(np.argmax, self.data, dim, keepdim))

    @_numpy_names
    def argmin(self, dim=None, keepdim: bool = False):
        return Tensor._wrap(_arg(np.argmin, self.data, dim, keepdim))

    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
        order = np.argsort(-self.data if largest else self.data, axis=dim, kind="stable")
        idx = np.take(order, np.arange(k), axis=dim)
        values = self.gather(dim, Tensor._wrap(idx))
        return _MinMax(values, Tensor._wrap(idx.astype(np.int64)))

    def gather(self, dim: int, index: "Tensor") -> "Tensor":
        idx = np.asarray(_data(index))
        axis = dim % self.ndim
        grid = list(np.indices(idx.shape, sparse=True))
        grid[axis] = idx
        return self[tuple(grid)]


class Size(tuple):
    """A shape (a tuple), with ``numel()`` as PyTorch's ``torch.Size``."""

    def numel(self) -> int:
        return int(np.prod(self)) if self else 1

    def __repr__(self) -> str:
        return f"cnnkit.Size({list(self)})"


class _MinMax(tuple):
    """``(values, indices)`` with PyTorch's attribute names."""

    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    @property
    def values(self):
        return self[0]

    @property
    def indices(self):
        return self[1]


class _RemoveHandle:
    def __init__(self, hooks: list, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


def _arg(fn, arr, dim, keepdim):
    if dim is None:
        return np.asarray(fn(arr), dtype=np.int64)
    out = fn(arr, axis=dim)
    if keepdim:
        out = np.expand_dims(out, dim)
    return np.asarray(out, dtype=np.int64)


def _index(index):
    """Tensors inside an index become arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray([i.item() if isinstance(i, Tensor) else i for i in index])
    return index


def _resolve_shape(dims: tuple, numel: int) -> tuple:
    """``dims`` with a -1 filled in; a shape that does not hold ``numel`` elements is an error."""
    unknown = [i for i, d in enumerate(dims) if d == -1]
    known = int(np.prod([d for d in dims if d != -1]))
    if len(unknown) > 1 or any(d < -1 for d in dims) or (
            numel != known if not unknown else (known == 0 or numel % known)):
        raise RuntimeError(f"shape {list(dims)} is invalid for input of size {numel}")
    if unknown:
        dims = tuple(numel // known if d == -1 else d for d in dims)
    return dims


def _as_tensor_operand(other):
    return other if isinstance(other, Tensor) else Tensor._wrap(np.asarray(other))


_SYMBOLS = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "Pow": "**", "Maximum": "maximum", "Minimum": "minimum"}


def _binary(name: str, a, b):
    elementwise = _ops()[0]
    fn = getattr(elementwise, name)
    like = a if isinstance(a, Tensor) else b
    a, b = _operand(a, like), _operand(b, like)
    sa, sb = np.shape(_data(a)), np.shape(_data(b))
    if sa != sb:
        try:
            np.broadcast_shapes(sa, sb)
        except ValueError:
            raise RuntimeError(f"{_SYMBOLS[name]}: shapes {sa} and {sb} cannot be broadcast together (each "
                               f"dimension must be equal, or 1 in one of them)") from None
    return fn.apply(a, b)


def _to_array(data, dtype=None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if data is None:
        data = []
    if isinstance(data, np.ndarray):
        arr = data
    else:
        if isinstance(data, (list, tuple)):
            data = [_data(d) if isinstance(d, Tensor) else d for d in data]
        arr = np.asarray(data)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(DEFAULT_DTYPE)     # Python floats: PyTorch's default dtype
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype), copy=False)
    return arr


# NumPy ufuncs that have a differentiable twin: np.exp(t) stays in the graph.
_BINARY_UFUNCS = {"add": "Add", "subtract": "Sub", "multiply": "Mul", "true_divide": "Div", "divide": "Div",
                  "power": "Pow", "maximum": "Maximum", "minimum": "Minimum"}
_UNARY_UFUNCS = {"negative": "__neg__", "exp": "exp", "log": "log", "sqrt": "sqrt", "absolute": "abs"}
