"""Optimizer base class: parameter groups, per-parameter state, PyTorch's state_dict layout.

Subclasses implement ``_update(group, params)``, which updates each parameter's ``.data`` in
place from its ``.grad``; the base class picks the parameters that take part in a step
(``requires_grad`` True and a gradient present) and owns everything else.
"""

from __future__ import annotations

import math
import threading
from itertools import chain
from typing import Any, Callable, Iterable

import numpy as np

from ..nn.module import Parameter

__all__ = ["Optimizer", "required"]


class _Required:
    """Sentinel for a hyperparameter without a default (mirrors ``torch.optim.optimizer.required``)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


class Optimizer:
    """Base class of every optimizer.

    Args:
        params: an iterable of ``Parameter`` (e.g. ``model.parameters()``), of
            ``(name, Parameter)`` pairs (``model.named_parameters()``), or of dicts
            ``{"params": [...], "lr": ..., ...}`` defining parameter groups; options not
            given in a group take the optimizer's defaults.
        defaults: the optimizer's default hyperparameters.

    Attributes:
        param_groups (list[dict]): one dict per group: ``"params"`` (list of Parameter) plus
            every hyperparameter. Schedulers change ``group["lr"]`` here.
        state (dict): ``Parameter -> dict`` of per-parameter buffers (momentum, moments, step).
        defaults (dict): the default hyperparameters.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        # Scratch arrays reused by every step (by dtype): updates need one or two
        # parameter-sized temporaries, and allocating them afresh each step is wasted work.
        self._scratch: dict[tuple[np.dtype, int], np.ndarray] = {}

        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Parameters or of dicts, "
                f"got a single {type(params).__name__}; pass [param] or model.parameters()"
            )
        if isinstance(params, dict):
            params = [params]
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                f"{type(self).__name__}: parameters must be an ordered collection, not a set "
                "(a set's order changes between runs, so state_dict indices would not match)"
            )
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (e.g. a layer unfrozen during fine-tuning).

        Args:
            param_group: ``{"params": Parameter | iterable of Parameter, **options}``;
                missing options take the optimizer's defaults.

        Raises:
            TypeError / ValueError: when an entry is not a Parameter, a parameter is already
            in another group, or a required option is missing.
        """
        if not isinstance(param_group, dict):
            raise TypeError(
                f"{type(self).__name__}.add_param_group: expected a dict, got {type(param_group).__name__}"
            )
        group = dict(param_group)
        if "params" not in group:
            raise ValueError(f"{type(self).__name__}: a parameter group needs a 'params' entry")
        params = group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                f"{type(self).__name__}: parameters must be an ordered collection, not a set "
                "(a set's order changes between runs, so state_dict indices would not match)"
            )
        params = list(params)
        names: list[str] = []
        plain: list[Parameter] = []
        for i, p in enumerate(params):
            if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
                names.append(p[0])
                p = p[1]
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__}: params[{i}] must be a cnnkit.nn.Parameter, got {type(p).__name__}"
                )
            plain.append(p)
        if names and len(names) != len(plain):
            raise ValueError(f"{type(self).__name__}: mix of named and unnamed parameters in one group")
        group["params"] = plain
        if names:
            group["param_names"] = names

        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(
                    f"{type(self).__name__}: parameter group didn't specify a value of required option {name!r}"
                )
            group.setdefault(name, default)

        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in plain}) != len(plain):
            raise ValueError(f"{type(self).__name__}: a parameter group contains the same Parameter twice")
        if existing & {id(p) for p in plain}:
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than one parameter group")
        self._validate_group(group)
        self.param_groups.append(group)

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Check a group's hyperparameters; subclasses extend it. Raises ValueError."""
        lr = group.get("lr")
        if lr is not None and not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"{type(self).__name__}: invalid learning rate lr={lr!r}, expected a number >= 0")

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (to None by default, as PyTorch does)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.data[...] = 0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every trainable parameter that has a gradient.

        Parameters that are frozen (``requires_grad=False``) or have no gradient yet are
        skipped and keep no state.

        Args:
            closure: optional callable that re-runs the forward and backward passes and
                returns the loss (needed by no optimizer here; kept for PyTorch parity).

        Returns:
            The closure's loss, or None.
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            active = [p for p in group["params"] if p.requires_grad and p.grad is not None]
            for p in active:
                if p.grad.data.shape != p.data.shape:
                    raise ValueError(
                        f"{type(self).__name__}: gradient shape {p.grad.data.shape} does not match "
                        f"parameter shape {p.data.shape}"
                    )
            if active:
                self._update(group, active)
        return loss

    def _update(self, group: dict[str, Any], params: list[Parameter]) -> None:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} does not implement _update()")

    def _temp(self, p: Parameter, slot: int) -> np.ndarray:
        """A scratch array shaped and typed like ``p`` (``slot`` 0 or 1: two independent ones).

        The contents are garbage; they stay valid only until the next call with the same slot
        in the same thread (each thread has its own, so ``_update`` may run on several).
        """
        return self._flat_temp(p.data.dtype, slot, p.data.size).reshape(p.data.shape)

    def _flat_temp(self, dtype, slot: int, size: int) -> np.ndarray:
        """A flat scratch array of ``size`` elements, with ``_temp``'s rules (this thread's
        own, ``slot`` 0 or 1, garbage contents)."""
        key = (np.dtype(dtype), slot, threading.get_ident())
        buf = self._scratch.get(key)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=dtype)
            self._scratch[key] = buf
        return buf[:size]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in PyTorch's layout.

        Returns:
            ``{"state": {index: {name: ndarray | number}}, "param_groups": [{hyperparameters...,
            "params": [indices]}]}`` where indices count parameters across groups in order.
            Arrays are copies, so later steps do not change a saved state dict.
        """
        index: dict[int, int] = {}
        groups_out = []
        for group in self.param_groups:
            packed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups_out.append(packed)
        state_out: dict[int, dict[str, Any]] = {}
        for p, st in self.state.items():
            if id(p) in index:
                state_out[index[id(p)]] = {
                    k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()
                }
        return {"state": state_out, "param_groups": groups_out}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by ``state_dict()`` (hyperparameters and buffers).

        The optimizer must have been built over the same parameters in the same groups.
        Floating arrays are cast to their parameter's dtype; state indices may be ints or
        strings (as they come back from JSON).

        Raises:
            ValueError: when the group count, a group's size or a buffer's shape differs.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' keys")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: loaded state dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        for i, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: parameter group {i} has {len(g['params'])} parameters, "
                    f"the loaded one has {len(s['params'])}"
                )
        id_map = dict(
            zip(
                (int(i) for i in chain.from_iterable(s["params"] for s in saved_groups)),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        new_state: dict[Parameter, dict[str, Any]] = {}
        for key, st in state_dict["state"].items():
            idx = int(key)
            if idx not in id_map:
                raise ValueError(f"{name}.load_state_dict: state for unknown parameter index {key!r}")
            p = id_map[idx]
            new_state[p] = {k: self._cast_state(p, k, v) for k, v in st.items()}
        self.state = new_state
        for group, saved in zip(self.param_groups, saved_groups):
            for k, v in saved.items():
                if k in ("params", "param_names"):
                    continue
                group[k] = self._restore_hyper(k, v)

    def _cast_state(self, p: Parameter, key: str, value: Any) -> Any:
        """One per-parameter state entry, back from a state dict (copied, dtype and shape checked)."""
        if value is None:
            return None
        arr = np.asarray(value)
        if key == "step":
            return int(arr) if float(arr) == int(arr) else float(arr)
        if arr.ndim == 0:
            return arr.item()
        if arr.shape != p.data.shape:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: state {key!r} has shape {arr.shape}, "
                f"expected the parameter's shape {p.data.shape}"
            )
        if np.issubdtype(arr.dtype, np.floating):
            return np.array(arr, dtype=p.data.dtype, copy=True, order="C")
        return np.array(arr, copy=True)

    @staticmethod
    def _restore_hyper(key: str, value: Any) -> Any:
        """Hyperparameters come back as Python values (JSON turns tuples into lists)."""
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, np.generic):
            value = value.item()
        if key == "betas" and isinstance(value, (list, tuple, np.ndarray)):
            return tuple(float(b) for b in value)
        return value

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k not in ("params", "param_names"):
                    lines.append(f"    {k}: {group[k]}")
        lines.append(")")
        return "\n".join(lines)


def decayed_gradient(param: np.ndarray, grad: np.ndarray, weight_decay: float, maximize: bool,
                     out: np.ndarray) -> np.ndarray:
    """The gradient an update uses: ``grad + weight_decay * param`` (L2 decay), negated when
    maximizing. Written into the scratch ``out`` and returned, never into ``grad`` (the
    caller may still read ``p.grad``); with no decay and no maximize, ``grad`` itself."""
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=out)
        if maximize:
            out -= grad
        else:
            out += grad
        return out
    if maximize:
        return np.negative(grad, out=out)
    return grad


def _check_range(opt: str, name: str, value: Any, low: float, high: float = math.inf,
                 high_open: bool = False) -> None:
    """Raise a ValueError naming the optimizer and option when ``value`` is out of range."""
    ok = isinstance(value, (int, float)) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bound = f"in [{low}, {high})" if high_open else (f">= {low}" if high == math.inf else f"in [{low}, {high}]")
        raise ValueError(f"{opt}: invalid {name}={value!r}, expected a number {bound}")
