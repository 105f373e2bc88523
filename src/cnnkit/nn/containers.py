"""Containers: run child modules in order, in parallel branches, or with a skip connection.

- ``Sequential`` runs children in order (``nn.fusion`` plans where several run as one op);
- ``Concat`` feeds the same input to parallel branches and joins their outputs along a
  dimension;
- ``Residual`` returns ``body(x) + shortcut(x)``;
- ``ModuleList`` / ``ModuleDict`` hold modules for a user's own ``forward()``.

The gradients come from the graph: no container writes backward code.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator


from ..ops.shape import Cat
from .module import Module

__all__ = ["Sequential", "Concat", "Residual", "ModuleList", "ModuleDict"]


def _check_module(owner: str, m, where: str) -> Module:
    if not isinstance(m, Module):
        raise TypeError(f"{owner}: {where} must be a cnnkit.nn.Module, got {type(m).__name__}")
    return m


class Sequential(Module):
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

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(m for m in self._modules.values() if m is not None)

    def append(self, module: Module) -> "Sequential":
        """Add ``module`` at the end (key ``str(len(self))``); returns self."""
        self.add_module(str(len(self)), _check_module("Sequential", module, "append() argument"))
        return self

    def extend(self, modules: Iterable[Module]) -> "Sequential":
        for m in modules:
            self.append(m)
        return self

    # ------------------------------------------------------------------ running
    def forward(self, x):
        from .fusion import run_sequential

        items = [(name, m) for name, m in self._modules.items() if m is not None]
        return run_sequential([m for _, m in items], [name for name, _ in items], x)


class Concat(Module):
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

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(m for m in self._modules.values() if m is not None)

    def __getitem__(self, idx: int) -> Module:
        return list(self)[idx]

    def forward(self, x):
        outs = [b(x) for b in self]
        nd = outs[0].ndim
        if not -nd <= self.dim < nd:
            raise ValueError(f"Concat: dim {self.dim} is out of range for branch outputs with {nd} dimensions")
        axis = self.dim % nd
        ref = tuple(outs[0].shape)
        for o in outs:
            if o.ndim != nd or tuple(o.shape[:axis]) + tuple(o.shape[axis + 1:]) != ref[:axis] + ref[axis + 1:]:
                shapes = ", ".join(str(tuple(o.shape)) for o in outs)
                raise ValueError(
                    f"Concat: branch outputs must match except along dim {self.dim}; got shapes {shapes}"
                )
        return Cat.apply(*outs, dim=axis)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Residual(Module):
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

    def forward(self, x):
        out = self.body(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if tuple(out.shape) != tuple(skip.shape):
            which = "input" if self.shortcut is None else "shortcut output"
            raise ValueError(
                f"Residual: body output shape {tuple(out.shape)} does not match {which} shape {tuple(skip.shape)}"
                + ("; pass a shortcut module (e.g. a 1x1 Conv2d) to change the shape"
                   if self.shortcut is None else "")
            )
        return out + skip


class ModuleList(Module):
    """A list of modules, registered (keys ``0``, ``1``, ... in ``state_dict``), for a
    user's own ``forward()``; it has no forward of its own.

    Args:
        modules: an iterable of modules (optional).
    """

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self._modules)), _check_module("ModuleList", module, "append() argument"))
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        items = list(self._modules.values())
        items.insert(index, _check_module("ModuleList", module, "insert() argument"))
        self._modules.clear()
        for i, m in enumerate(items):
            self._modules[str(i)] = m

    def __getitem__(self, idx):
        items = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(items[idx])
        return items[idx]

    def __setitem__(self, idx: int, module: Module) -> None:
        key = list(self._modules)[idx]
        self._modules[key] = _check_module("ModuleList", module, "the new item")

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of modules by name, registered (keys ``name.weight`` in ``state_dict``), for a
    user's own ``forward()``; it has no forward of its own.

    Args:
        modules: a mapping or an iterable of (name, module) pairs (optional).
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def update(self, modules) -> None:
        items = modules.items() if hasattr(modules, "items") else modules
        for name, m in items:
            self[name] = m

    def __getitem__(self, name: str) -> Module:
        return self._modules[name]

    def __setitem__(self, name: str, module: Module) -> None:
        self.add_module(str(name), _check_module("ModuleDict", module, f"entry {name!r}"))

    def __delitem__(self, name: str) -> None:
        del self._modules[name]

    def __contains__(self, name: str) -> bool:
        return name in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()
