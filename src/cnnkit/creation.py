"""Tensor factories and the top-level functions of PyTorch's namespace (``cnnkit.zeros``,
``cnnkit.cat``, ``cnnkit.max`` ...). Random draws use cnnkit's global generator
(``cnnkit.manual_seed``). Floating results are float32 unless a dtype is given."""

from __future__ import annotations

import numpy as np

from .random import get_generator
from ._tensor import DEFAULT_DTYPE, Tensor

__all__ = ["tensor", "as_tensor", "from_numpy", "zeros", "ones", "empty", "full", "randn", "rand", "randint",
           "arange", "linspace", "eye", "zeros_like", "ones_like", "empty_like", "full_like", "randn_like",
           "rand_like", "cat", "concat", "stack", "flatten", "max", "min", "argmax", "argmin", "sum", "mean",
           "exp", "log", "sqrt", "abs", "clamp", "matmul", "maximum", "minimum", "where", "is_tensor",
           "numel", "softmax", "log_softmax", "relu", "sigmoid", "tanh", "allclose", "equal", "randperm",
           "set_default_dtype", "get_default_dtype"]


def _shape(size) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def _finish(arr: np.ndarray, requires_grad: bool) -> Tensor:
    t = Tensor._wrap(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _float(dtype) -> np.dtype:
    return np.dtype(DEFAULT_DTYPE if dtype is None else dtype)


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new Tensor holding a copy of ``data`` (Python floats become float32)."""
    arr = Tensor(data, dtype=dtype).data
    arr = np.array(arr, copy=True)
    return _finish(arr, requires_grad)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """A Tensor sharing ``data``'s memory where it can."""
    if isinstance(data, Tensor):
        return data if dtype is None else data.type(dtype)
    return Tensor(data, dtype=dtype)


def from_numpy(array: np.ndarray) -> Tensor:
    """A Tensor sharing the array's memory (changes to one show in the other)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected np.ndarray, got {type(array).__name__}")
    return Tensor._wrap(array)


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)


def numel(t: Tensor) -> int:
    return t.numel()


def zeros(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _finish(np.zeros(_shape(size), _float(dtype)), requires_grad)


def ones(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _finish(np.ones(_shape(size), _float(dtype)), requires_grad)


def empty(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _finish(np.empty(_shape(size), _float(dtype)), requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    if dtype is None and isinstance(fill_value, (bool, int, np.integer)):
        dtype = np.bool_ if isinstance(fill_value, bool) else np.int64
    return _finish(np.full(_shape((size,)), fill_value, _float(dtype)), requires_grad)


def eye(n: int, m: int | None = None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _finish(np.eye(n, m, dtype=_float(dtype)), requires_grad)


def randn(*size, dtype=None, device=None, requires_grad: bool = False, generator=None) -> Tensor:
    return _finish(get_generator(generator).standard_normal(_shape(size)).astype(_float(dtype)), requires_grad)


def rand(*size, dtype=None, device=None, requires_grad: bool = False, generator=None) -> Tensor:
    return _finish(get_generator(generator).random(_shape(size)).astype(_float(dtype)), requires_grad)


def randint(low, high=None, size=(), dtype=None, device=None, generator=None) -> Tensor:
    if high is None:
        low, high = 0, low
    return Tensor._wrap(get_generator(generator).integers(low, high, size=_shape((size,))).astype(dtype or np.int64))


def randperm(n: int, dtype=None, device=None, generator=None) -> Tensor:
    return Tensor._wrap(get_generator(generator).permutation(n).astype(dtype or np.int64))


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = np.int64 if ints else DEFAULT_DTYPE
    return _finish(np.arange(start, end, step).astype(dtype), requires_grad)


def linspace(start, end, steps: int, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _finish(np.linspace(start, end, steps).astype(_float(dtype)), requires_grad)


def _like(fn, t: Tensor, dtype, requires_grad, *args):
    return _finish(fn(t.shape, *args).astype(dtype or t.dtype), requires_grad)


def zeros_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(np.zeros, input, dtype, requires_grad)


def ones_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(np.ones, input, dtype, requires_grad)


def empty_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(np.empty, input, dtype, requires_grad)


def full_like(input: Tensor, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _finish(np.full(input.shape, fill_value, dtype or input.dtype), requires_grad)


def randn_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return randn(*input.shape, dtype=dtype or input.dtype, requires_grad=requires_grad)


def rand_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return rand(*input.shape, dtype=dtype or input.dtype, requires_grad=requires_grad)


def _t(x) -> Tensor:
    """An array (``outputs.data``) or number where PyTorch passes a Tensor."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _tensors(tensors) -> list[Tensor]:
    return [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]


def cat(tensors, dim: int = 0) -> Tensor:
    """Join tensors along an existing dimension (differentiable)."""
    from .ops.shape import Cat

    tensors = _tensors(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    return Cat.apply(*tensors, dim=dim)


concat = cat


def stack(tensors, dim: int = 0) -> Tensor:
    """Join tensors along a new dimension (differentiable)."""
    from .ops.shape import Stack

    tensors = _tensors(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    return Stack.apply(*tensors, dim=dim)


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    return _t(input).flatten(start_dim, end_dim)


def max(input: Tensor, dim=None, keepdim: bool = False):
    """The largest value, ``(values, indices)`` along ``dim``, or the elementwise maximum of two tensors."""
    return _t(input).max(dim, keepdim)


def min(input: Tensor, dim=None, keepdim: bool = False):
    return _t(input).min(dim, keepdim)


def maximum(a: Tensor, b: Tensor) -> Tensor:
    return _t(a).max(_t(b))


def minimum(a: Tensor, b: Tensor) -> Tensor:
    return _t(a).min(_t(b))


def argmax(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return _t(input).argmax(dim, keepdim)


def argmin(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return _t(input).argmin(dim, keepdim)


def sum(input: Tensor, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
    return _t(input).sum(dim, keepdim, dtype)


def mean(input: Tensor, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
    return _t(input).mean(dim, keepdim, dtype)


def exp(input: Tensor) -> Tensor:
    return _t(input).exp()


def log(input: Tensor) -> Tensor:
    return _t(input).log()


def sqrt(input: Tensor) -> Tensor:
    return _t(input).sqrt()


def abs(input: Tensor) -> Tensor:
    return _t(input).abs()


def clamp(input: Tensor, min=None, max=None) -> Tensor:
    return _t(input).clamp(min, max)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return _t(a) @ b


def where(condition, input, other) -> Tensor:
    """Elementwise choice; differentiable in ``input`` and ``other``."""
    cond = np.asarray(condition.data if isinstance(condition, Tensor) else condition, bool)
    a = input if isinstance(input, Tensor) else Tensor(input)
    b = other if isinstance(other, Tensor) else Tensor(other)
    return a * Tensor._wrap(cond.astype(a.dtype)) + b * Tensor._wrap((~cond).astype(b.dtype))


def softmax(input: Tensor, dim: int) -> Tensor:
    return _t(input).softmax(dim)


def log_softmax(input: Tensor, dim: int) -> Tensor:
    return _t(input).log_softmax(dim)


def relu(input: Tensor) -> Tensor:
    return _t(input).relu()


def sigmoid(input: Tensor) -> Tensor:
    return _t(input).sigmoid()


def tanh(input: Tensor) -> Tensor:
    return _t(input).tanh()


def allclose(a, b, rtol: float = 1e-05, atol: float = 1e-08) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol))


def equal(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def set_default_dtype(dtype) -> None:
    if np.dtype(dtype) != np.float32:
        raise NotImplementedError("cnnkit's default dtype is float32")


def get_default_dtype():
    return np.dtype(DEFAULT_DTYPE)
