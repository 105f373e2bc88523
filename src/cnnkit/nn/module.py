"""Parameter and Module: the base of every layer, container and model.

A Module holds Parameters (Tensors that require a gradient), buffers and sub-modules,
registered by assignment in insertion order, and computes in ``forward`` on Tensors. The
autograd engine records each operation, so ``loss.backward()`` reaches every parameter;
no module writes backward code (the math is in ``cnnkit.ops``).

NumPy in, NumPy out: calling a module on an ndarray (not a Tensor) returns an ndarray, and
``module.backward(grad_out)`` then returns the gradient with respect to that input (a thin
call into the same graph, kept for array-level code and gradient checks).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np

from ..autograd import grad_mode
from ..autograd.grad_mode import no_grad
from .._device import check_device, device as _device_type, parse_device
from .._tensor import Tensor
from . import deferred

DEFAULT_DTYPE = np.float32


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable.

    Args:
        data: the initial value (copied to a C-contiguous array; float32 unless it is
            already a floating array of another precision, e.g. float64 for gradient checks).
        requires_grad: when False the parameter is frozen: no gradient is computed for it
            and optimizers skip it.

    Attributes:
        data (np.ndarray): the value, updated in place by optimizers.
        grad (Tensor | None): accumulated gradient, same shape and dtype as ``data``;
            None until the first backward pass (or after ``zero_grad()``).
    """

    __slots__ = ()

    def __init__(self, data: Any = None, requires_grad: bool = True):
        arr = np.asarray(data.data if isinstance(data, Tensor) else (np.empty(0) if data is None else data))
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(DEFAULT_DTYPE)
        super().__init__(np.ascontiguousarray(arr).copy())
        self.requires_grad = bool(requires_grad)

    def accumulate_grad(self, g: np.ndarray, owned: bool = False) -> None:
        """Add ``g`` into ``self.grad`` (allocating it on first use). Frozen: no-op."""
        if not self.requires_grad:
            return
        g = np.asarray(g.data if isinstance(g, Tensor) else g)
        if g.shape != self.data.shape:
            raise ValueError(f"gradient shape {g.shape} does not match parameter shape {self.data.shape}")
        if self.grad is None:
            keep = owned and g.dtype == self.data.dtype and g.flags.c_contiguous and g.flags.writeable
            self.grad = Tensor._wrap(g if keep else np.array(g, dtype=self.data.dtype, copy=True))
        else:
            self.grad.data += g

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}, requires_grad={self.requires_grad})"


class _HookHandle:
    def __init__(self, hooks: dict, key: int):
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


class Module:
    """Base class of layers, containers and models (PyTorch's vocabulary).

    Subclasses call ``super().__init__()`` first, then assign ``Parameter``s, sub-modules
    and buffers (``register_buffer``) as attributes; they are kept in insertion order, so
    ``parameters()`` and ``state_dict()`` keys come out exactly as PyTorch would give them.

    Subclasses implement ``forward(*tensors)``; the gradients come from the graph
    (``loss.backward()``). A subclass may instead write ``forward(array)`` and
    ``backward(grad_out)`` on NumPy arrays itself (keeping what backward needs in
    ``self._cache``, adding parameter gradients with ``Parameter.accumulate_grad``): each
    call is then one node of the graph (``ops.legacy``).

    ``needs_input_grad`` (default True): for NumPy input only, whether ``backward(grad_out)``
    computes the gradient with respect to that input (the first layer of a network needs
    none: ``fit`` sets it False).
    """

    needs_input_grad: bool = True
    #: ``returns_fresh_output``: forward's output is a new array that the layer's graph
    #: node does not keep, so ``nn.fusion`` may let the next layer (a ReLU) work in place
    #: on it inside a ``Sequential``.
    returns_fresh_output: bool = False

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() is called in {type(self).__name__}"
            )
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            self._buffers.pop(name, None)
            self._parameters[name] = value
            self.__dict__.pop(name, None)
        elif isinstance(value, Module):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            self._modules[name] = value
            self.__dict__.pop(name, None)
        elif name in self._buffers:
            # Re-assigning a registered buffer keeps it a buffer (BatchNorm updates its stats so).
            self._buffers[name] = value
        else:
            # A plain attribute (or None) replaces a parameter / sub-module of the same name.
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for store in ("_parameters", "_modules", "_buffers"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._modules, self._buffers):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: np.ndarray | None) -> None:
        """Register a non-trainable array saved in ``state_dict`` (e.g. BatchNorm's running stats)."""
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    def add_module(self, name: str, module: "Module | None") -> None:
        self._modules[name] = module

    # ------------------------------------------------------------------ running
    def __call__(self, *args, **kwargs):
        if args and isinstance(args[0], np.ndarray):
            return self._call_on_array(*args, **kwargs)
        # Counted so that the outermost call computes what its layers deferred (nn.deferred).
        deferred.enter_module()
        try:
            out = self._call(args, kwargs)
        except BaseException:
            deferred.leave_module(failed=True)
            raise
        deferred.leave_module()
        return out

    def _call(self, args, kwargs):
        if type(self).backward is not Module.backward and len(args) == 1 and isinstance(args[0], Tensor):
            # A layer with a hand-written backward on arrays: one node of the graph.
            from ..ops.legacy import ModuleWithBackward

            params = [p for p in self._parameters.values() if p is not None]
            out = ModuleWithBackward.apply(args[0], *params, module=self)
        else:
            out = self.forward(*args, **kwargs)
        if self._forward_hooks:
            inp = args[0] if len(args) == 1 else args
            for hook in list(self._forward_hooks.values()):
                result = hook(self, inp, out)
                if result is not None:
                    out = result
        return out

    def _call_on_array(self, x: np.ndarray, *args, **kwargs):
        """NumPy in, NumPy out: run the Tensor forward on ``x`` and keep the graph's two ends
        so that ``backward(grad_out)`` can return the gradient with respect to ``x``."""
        xt = Tensor._wrap(x)
        if grad_mode._enabled and self.needs_input_grad and np.issubdtype(x.dtype, np.floating):
            xt.requires_grad = True
        out = self(xt, *args, **kwargs)
        self.__dict__["_array_io"] = (xt, out) if grad_mode._enabled else None
        return out.data if isinstance(out, Tensor) else out

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, grad_out) -> np.ndarray | None:
        """The gradient with respect to the array given to the last call, after adding every
        parameter's gradient into ``.grad``: ``out.backward(grad_out)`` on that call's graph.
        For Tensor code, call ``loss.backward()`` instead."""
        io = self.__dict__.get("_array_io")
        if io is None:
            raise RuntimeError(
                f"{self._short_name()}: backward() called before forward() (on a NumPy array, with "
                f"gradients enabled), or twice after one forward; with Tensors call loss.backward()"
            )
        self.__dict__["_array_io"] = None
        xt, out = io
        if isinstance(out, Tensor) and out.requires_grad:
            out.backward(grad_out.data if isinstance(grad_out, Tensor) else np.asarray(grad_out))
        if xt.grad is None or not self.needs_input_grad:
            return None
        return xt.grad.data

    def register_forward_hook(self, hook: Callable[["Module", Any, Any], None]) -> _HookHandle:
        """Call ``hook(module, input, output)`` after every forward; returns a handle with ``remove()``."""
        key = max(self._forward_hooks, default=-1) + 1
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    def _need_cache(self, cache: Any) -> Any:
        """Return ``cache`` or raise the error for a backward with no forward before it."""
        if cache is None:
            raise RuntimeError(
                f"{self._short_name()}: backward() called before forward(), or twice after one "
                f"forward (a Sequential frees its layers' saved arrays in backward(), as PyTorch "
                f"frees its graph); run a forward pass first"
            )
        return cache

    def _short_name(self) -> str:
        extra = self.extra_repr()
        return f"{type(self).__name__}({extra})"

    # ------------------------------------------------------------------ traversal
    def children(self) -> Iterator["Module"]:
        for m in self._modules.values():
            if m is not None:
                yield m

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for n, m in self._modules.items():
            if m is not None:
                yield n, m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        seen: set[int] = set()

        def walk(mod: Module, pre: str):
            if id(mod) in seen:
                return
            seen.add(id(mod))
            yield pre, mod
            for n, child in mod.named_children():
                yield from walk(child, f"{pre}.{n}" if pre else n)

        yield from walk(self, prefix)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mp, m in mods:
            for n, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mp}.{n}" if mp else n), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mp, m in mods:
            for n, b in m._buffers.items():
                if b is not None:
                    yield (f"{mp}.{n}" if mp else n), b

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers by dotted name, in PyTorch's order (each module's own
        parameters, then its own buffers, then its children). Values are copies."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()

        def walk(mod: Module, pre: str):
            for n, p in mod._parameters.items():
                if p is not None:
                    out[pre + n] = p.data.copy()
            for n, b in mod._buffers.items():
                if b is not None:
                    out[pre + n] = np.array(b, copy=True)
            for n, child in mod.named_children():
                walk(child, f"{pre}{n}.")

        walk(self, "")
        return out

    def _state_slots(self) -> "OrderedDict[str, tuple[Module, str, str]]":
        slots: OrderedDict[str, tuple[Module, str, str]] = OrderedDict()

        def walk(mod: Module, pre: str):
            for n, p in mod._parameters.items():
                if p is not None:
                    slots[pre + n] = (mod, n, "param")
            for n, b in mod._buffers.items():
                if b is not None:
                    slots[pre + n] = (mod, n, "buffer")
            for n, child in mod.named_children():
                walk(child, f"{pre}{n}.")

        walk(self, "")
        return slots

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        Args:
            state_dict: mapping of dotted names to arrays (NumPy arrays or anything
                ``np.asarray`` takes).
            strict: when True, missing or unexpected keys are an error.

        Returns:
            ``(missing_keys, unexpected_keys)``.

        Raises:
            KeyError / ValueError: one message listing every missing key, unexpected key and
            shape mismatch (shape mismatches are an error even when ``strict`` is False).
            Nothing is changed when an error is raised.
        """
        slots = self._state_slots()
        missing = [k for k in slots if k not in state_dict]
        unexpected = [k for k in state_dict if k not in slots]
        mismatched = []
        values = {}
        for key, (mod, name, kind) in slots.items():
            if key not in state_dict:
                continue
            arr = np.asarray(state_dict[key])
            current = mod._parameters[name].data if kind == "param" else np.asarray(mod._buffers[name])
            if arr.shape != current.shape:
                mismatched.append(f"{key}: expected shape {current.shape}, got {arr.shape}")
            values[key] = arr
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise ValueError(
                f"Error loading state_dict into {type(self).__name__}:\n  " + "\n  ".join(problems)
            )
        for key, arr in values.items():
            mod, name, kind = slots[key]
            if kind == "param":
                p = mod._parameters[name]
                p.data = np.ascontiguousarray(arr, dtype=p.data.dtype).copy()
            else:
                old = np.asarray(mod._buffers[name])
                mod._buffers[name] = np.array(arr, dtype=old.dtype, copy=True)
        return missing, unexpected

    # ------------------------------------------------------------------ modes, grads, dtype
    def train(self, mode: bool = True) -> "Module":
        """Set training mode on this module and every sub-module; returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Set evaluation mode (BatchNorm uses running stats, Dropout is off); returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear accumulated gradients (to None by default, as PyTorch does)."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter; returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def to(self, *args, **kwargs) -> "Module":
        """``to(device)``, ``to(dtype)`` or both, as PyTorch: a dtype casts every floating
        parameter and buffer (e.g. ``np.float64`` / ``cnnkit.float64`` for gradient checks;
        integer buffers such as ``num_batches_tracked`` keep their type); the only device is
        the CPU. Returns self."""
        dtype = kwargs.get("dtype")
        for a in list(args) + [kwargs.get("device")]:
            if a is None or isinstance(a, bool):
                continue
            if isinstance(a, (str, _device_type)):
                check_device(parse_device(a))
            elif isinstance(a, Tensor):
                dtype = a.dtype
            else:
                dtype = a
        if dtype is None:
            return self
        dtype = np.dtype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = p.data.astype(dtype)
                    p.grad = None if p.grad is None else p.grad.data.astype(dtype)
            for n, b in list(m._buffers.items()):
                if b is not None and np.issubdtype(np.asarray(b).dtype, np.floating):
                    m._buffers[n] = np.asarray(b).astype(dtype)
        return self

    def cpu(self) -> "Module":
        return self

    def cuda(self, *args, **kwargs) -> "Module":
        check_device(_device_type("cuda"))
        return self

    def apply(self, fn: Callable[["Module"], Any]) -> "Module":
        """Call ``fn`` on every sub-module (children first) and on self, as PyTorch
        (e.g. ``model.apply(init_weights)``); returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def double(self) -> "Module":
        return self.to(np.float64)

    def float(self) -> "Module":
        return self.to(np.float32)

    # ------------------------------------------------------------------ display
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {child_repr}")
        main = f"{type(self).__name__}({self.extra_repr()}"
        if lines:
            main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"

    def summary(self, input_shape: tuple[int, ...], batch_size: int = 1, print_fn: Callable | None = print) -> str:
        """A Keras-like table of every leaf layer: name, type, output shape, parameter count.

        Args:
            input_shape: shape of one sample, e.g. ``(1, 28, 28)``.
            batch_size: batch size of the dummy forward pass.
            print_fn: where to print the table (None: do not print).

        Returns:
            The table as a string.
        """
        rows: list[tuple[str, str, str, int]] = []
        handles = []
        leaves = [(n, m) for n, m in self.named_modules() if not m._modules or n == "" and not m._modules]
        for name, mod in leaves:
            own = sum(p.numel() for p in mod.parameters())

            def hook(m, inp, out, name=name, own=own):
                shape = out.shape if hasattr(out, "shape") else "?"
                rows.append((name or type(m).__name__, type(m).__name__, str(tuple(shape)), own))

            handles.append(mod.register_forward_hook(hook))
        was_training = self.training
        self.eval()
        try:
            p0 = next(iter(self.parameters()), None)
            dtype = p0.dtype if p0 is not None else DEFAULT_DTYPE
            with no_grad():              # shapes only: nothing to record
                self(np.zeros((batch_size, *input_shape), dtype=dtype))
        finally:
            for h in handles:
                h.remove()
            self.train(was_training)
        total = self.num_parameters()
        trainable = self.num_parameters(trainable_only=True)
        w0 = max([len("Layer")] + [len(r[0]) for r in rows]) + 2
        w1 = max([len("Type")] + [len(r[1]) for r in rows]) + 2
        w2 = max([len("Output shape")] + [len(r[2]) for r in rows]) + 2
        header = f"{'Layer':<{w0}}{'Type':<{w1}}{'Output shape':<{w2}}{'Params':>12}"
        rule = "=" * len(header)
        out = [f"{type(self).__name__} summary (input {tuple(input_shape)})", rule, header, "-" * len(header)]
        for r in rows:
            out.append(f"{r[0]:<{w0}}{r[1]:<{w1}}{r[2]:<{w2}}{r[3]:>12,}")
        out += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}"]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text
