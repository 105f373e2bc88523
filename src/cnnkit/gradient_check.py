"""Finite-difference gradient checking for hand-written backward passes.

``gradcheck`` compares the gradients a backward pass computes (the graph's, for a Function,
a Module or any function of Tensors) with float64 central differences of
``sum(forward(x) * g)`` for a random upstream gradient ``g``, operations and modules alike.
Use it to test your own layers::

    import numpy as np
    import cnnkit
    from cnnkit.autograd import Function

    class Scale(Function):          # y = x * w, one scale per feature
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x * w
        @staticmethod
        def backward(ctx, grad_out):
            x, w = ctx.saved_tensors
            return grad_out * w, (grad_out * x).sum(axis=0)

    cnnkit.gradcheck(Scale, np.random.randn(4, 3), np.random.randn(3))  # True, or raises GradcheckError

What is checked:

- the input gradient and the gradient of every trainable parameter, elementwise within
  ``atol + rtol * |numeric|``;
- frozen parameters (``requires_grad=False``) receive no gradient;
- ``backward`` does not write into ``grad_out`` (it is passed as a read-only array) nor into
  the input;
- the forward pass is deterministic (random draws such as Dropout masks are replayed: the
  global generator and any ``numpy.random.Generator`` held by a module are reset before every
  forward pass).

The module is cast to float64 for the check and restored afterwards (dtypes, values,
gradients, buffers such as BatchNorm's running statistics, and random generator states).
Keep shapes small: every input and parameter element costs two forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import random as _random
from .nn.module import Module, Parameter

__all__ = ["gradcheck", "gradcheck_loss", "GradcheckError", "GradcheckReport", "TensorCheck"]


class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` when an analytic gradient disagrees with finite differences."""


@dataclass
class TensorCheck:
    """The comparison for one tensor (an input or a parameter)."""

    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...] | None
    analytic_at_worst: float
    numeric_at_worst: float
    passed: bool

    def line(self) -> str:
        status = "ok" if self.passed else "FAILED"
        text = (f"  {self.name:<28} {str(self.shape):<18} max abs err {self.max_abs_err:.3e}  "
                f"max rel err {self.max_rel_err:.3e}  {status}")
        if not self.passed:
            text += (f"\n      worst at index {self.worst_index}: analytic {self.analytic_at_worst:.8g}, "
                     f"numeric {self.numeric_at_worst:.8g}")
        return text


@dataclass
class GradcheckReport:
    """Result of a gradient check; truthy when everything passed. ``str()`` gives a table."""

    target: str
    atol: float
    rtol: float
    checks: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        head = f"gradcheck {'passed' if self.passed else 'FAILED'} for {self.target} (atol={self.atol:g}, rtol={self.rtol:g})"
        lines = [head] + [c.line() for c in self.checks] + [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


# ---------------------------------------------------------------------- state handling
class _Snapshot:
    """Everything a check may change in a module, so it can be put back exactly."""

    def __init__(self, module: Module | None):
        self.params: list[tuple[Parameter, np.ndarray, np.ndarray | None]] = []
        self.buffers: list[tuple[Module, str, Any, Any]] = []
        self.generators: list[tuple[np.random.Generator, dict]] = []
        self.global_rng = _random.get_rng_state()
        if module is None:
            return
        for m in module.modules():
            for p in m._parameters.values():
                if p is not None:
                    self.params.append((p, p.data, p.grad))
            for n, b in m._buffers.items():
                # Keep the original object and its value: integer buffers are not cast by
                # ``to(float64)``, so the check's forward passes update them in place.
                self.buffers.append((m, n, b, None if b is None else np.array(b, copy=True)))
            for v in vars(m).values():
                if isinstance(v, np.random.Generator):
                    self.generators.append((v, v.bit_generator.state))

    def replay_randomness(self) -> None:
        """Reset every random generator, so each forward pass draws the same numbers."""
        _random.set_rng_state(self.global_rng)
        for gen, state in self.generators:
            gen.bit_generator.state = state

    def restore(self) -> None:
        self.replay_randomness()
        for p, data, grad in self.params:
            p.data, p.grad = data, grad
        for m, n, original, value in self.buffers:
            if isinstance(original, np.ndarray) and original.flags.writeable:
                original[...] = value
            m._buffers[n] = original


def _compare(name: str, analytic: np.ndarray, numeric: np.ndarray, atol: float, rtol: float) -> TensorCheck:
    err = np.abs(analytic - numeric)
    excess = err - (atol + rtol * np.abs(numeric))
    rel = err / np.maximum(np.abs(numeric), 1e-12) if err.size else err
    if err.size:
        worst = np.unravel_index(int(np.argmax(excess)), err.shape)
        a_w, n_w = float(analytic[worst]), float(numeric[worst])
    else:
        worst, a_w, n_w = None, 0.0, 0.0
    return TensorCheck(
        name=name, shape=tuple(analytic.shape),
        max_abs_err=float(err.max()) if err.size else 0.0,
        max_rel_err=float(rel.max()) if err.size else 0.0,
        worst_index=tuple(int(i) for i in worst) if worst is not None else None,
        analytic_at_worst=a_w, numeric_at_worst=n_w,
        passed=bool(np.all(excess <= 0)) and bool(np.all(np.isfinite(analytic))),
    )


def _numeric_grad(f: Callable[[], float], arr: np.ndarray, eps: float) -> np.ndarray:
    """Central differences of f with respect to every element of ``arr`` (perturbed in place)."""
    grad = np.zeros(arr.shape, np.float64)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + eps
        f_plus = f()
        arr[idx] = orig - eps
        f_minus = f()
        arr[idx] = orig
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def _run(target_name: str, forward: Callable, backward: Callable, xs: list, params: list,
         snapshot: _Snapshot, grad_out, eps: float, atol: float, rtol: float, seed: int,
         raise_exception: bool, check_params: bool, scalar_grad: bool = False):
    report = GradcheckReport(target=target_name, atol=atol, rtol=rtol)

    def fwd() -> np.ndarray:
        snapshot.replay_randomness()
        return np.asarray(forward(*xs), dtype=np.float64)

    out = fwd()
    if grad_out is None:
        g = np.random.default_rng(seed).standard_normal(out.shape)
    else:
        g = np.array(grad_out, dtype=np.float64)
        if g.shape != out.shape:
            raise ValueError(f"gradcheck: grad_out has shape {g.shape} but the output has shape {out.shape}")
    g.flags.writeable = False  # backward must never write into its upstream gradient

    def objective() -> float:
        return float(np.sum(fwd() * g))

    for _, p in params:
        p.grad = None
    x_before = [x.copy() if isinstance(x, np.ndarray) else x for x in xs]
    fwd()
    try:
        grads = backward(float(g) if scalar_grad else g)
    except ValueError as exc:
        if "read-only" in str(exc):
            report.problems.append(f"backward wrote into grad_out ({exc})")
            return _finish(report, raise_exception)
        raise
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    for i, (x, xb) in enumerate(zip(xs, x_before)):
        if isinstance(x, np.ndarray) and not np.array_equal(x, xb, equal_nan=True):
            report.problems.append(f"forward or backward modified input[{i}] in place")
    param_grads = {n: (None if p.grad is None else p.grad.data.copy()) for n, p in params}

    out_again = fwd()
    if not np.array_equal(out, out_again, equal_nan=True):
        report.problems.append("forward is not deterministic for a fixed input (an unseeded random draw?)")

    float_inputs = [i for i, x in enumerate(xs) if isinstance(x, np.ndarray) and x.dtype == np.float64]
    if len(grads) < len(float_inputs):
        report.problems.append(f"backward returned {len(grads)} input gradient(s) for {len(float_inputs)} input(s)")
    for i, gi in zip(float_inputs, grads):
        name = f"input[{i}]" if len(float_inputs) > 1 else "input"
        if gi is None:
            report.problems.append(f"backward returned None for {name} (needs_input_grad is False?)")
            continue
        gi = np.asarray(gi)
        if gi.shape != xs[i].shape:
            report.problems.append(f"grad of {name} has shape {gi.shape}, expected {xs[i].shape}")
            continue
        if gi.dtype != np.float64:
            report.problems.append(f"grad of {name} has dtype {gi.dtype} for a float64 input")
        report.checks.append(_compare(name, gi.astype(np.float64), _numeric_grad(objective, xs[i], eps), atol, rtol))

    for name, p in params:
        ga = param_grads[name]
        if not p.requires_grad:
            if ga is not None:
                report.problems.append(f"frozen parameter {name} (requires_grad=False) received a gradient")
            continue
        if not check_params:
            continue
        if ga is None:
            report.problems.append(f"parameter {name} received no gradient from backward")
            continue
        if ga.dtype != np.float64:
            report.problems.append(f"grad of parameter {name} has dtype {ga.dtype}, expected float64")
        report.checks.append(_compare(name, ga.astype(np.float64), _numeric_grad(objective, p.data, eps), atol, rtol))
    return _finish(report, raise_exception)


def _finish(report: GradcheckReport, raise_exception: bool):
    if raise_exception:
        if not report.passed:
            raise GradcheckError(str(report))
        return True
    return report


def _describe(obj: Any) -> str:
    if isinstance(obj, Module):
        return obj._short_name()
    return getattr(obj, "__name__", type(obj).__name__)


def gradcheck(module_or_fn: Any, *inputs: np.ndarray, grad_out: np.ndarray | None = None,
              eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4, check_params: bool = True,
              seed: int = 0, raise_exception: bool = True) -> bool | GradcheckReport:
    """Check a module's (or a forward/backward pair's) gradients against finite differences.

    Args:
        module_or_fn: a ``cnnkit.nn.Module`` (called with one input), a
            ``cnnkit.autograd.Function`` subclass or any function of Tensors (its gradients
            come from the graph: ``out.backward(grad_out)``), or a pair
            ``(forward_fn, backward_fn)`` where ``forward_fn(*inputs) -> out`` and
            ``backward_fn(grad_out) -> grad_in`` (or a tuple of one gradient per floating input),
            or any object with such ``forward`` / ``backward`` methods.
        *inputs: input arrays; floating ones are cast to float64 copies and checked, others
            (e.g. integer indices) are passed through unchanged.
        grad_out: the upstream gradient; default a random normal array (seeded by ``seed``),
            never ``ones`` (a sum hides errors, e.g. BatchNorm's input gradient of a sum is 0).
        eps: finite-difference step.
        atol, rtol: elementwise tolerance ``|analytic - numeric| <= atol + rtol * |numeric|``.
        check_params: also check every trainable parameter's gradient (module only).
        seed: seed of the random upstream gradient.
        raise_exception: raise ``GradcheckError`` on failure (default) instead of returning.

    Returns:
        True when ``raise_exception`` (or raises); otherwise a ``GradcheckReport`` (truthy when
        everything passed; ``str(report)`` shows every tensor's maximum error).

    Raises:
        GradcheckError: naming each failing tensor with its maximum error and the worst element.
    """
    xs = [np.array(x, dtype=np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
          for x in inputs]
    if isinstance(module_or_fn, Module):
        module = module_or_fn
        if len(xs) != 1:
            raise TypeError(f"gradcheck: a Module takes exactly one input, got {len(xs)}")
        snapshot = _Snapshot(module)
        try:
            module.to(np.float64)
            params = list(module.named_parameters())
            return _run(_describe(module), module, module.backward, xs, params, snapshot, grad_out,
                        eps, atol, rtol, seed, raise_exception, check_params)
        finally:
            snapshot.restore()
    if _is_tensor_function(module_or_fn):
        forward, backward = _graph_pair(module_or_fn)
        name = getattr(module_or_fn, "__name__", type(module_or_fn).__name__)
    elif isinstance(module_or_fn, (tuple, list)) and len(module_or_fn) == 2:
        forward, backward = module_or_fn
        name = _describe(forward)
    elif hasattr(module_or_fn, "forward") and hasattr(module_or_fn, "backward"):
        forward, backward = module_or_fn.forward, module_or_fn.backward
        name = _describe(module_or_fn)
    else:
        raise TypeError(
            "gradcheck: expected a cnnkit.nn.Module, a Function, a function of Tensors, a (forward_fn, backward_fn) "
            f"pair or an object with forward/backward methods, got {type(module_or_fn).__name__}"
        )
    snapshot = _Snapshot(None)
    try:
        return _run(name, forward, backward, xs, [], snapshot, grad_out, eps, atol, rtol, seed,
                    raise_exception, check_params)
    finally:
        snapshot.restore()


def _is_tensor_function(obj: Any) -> bool:
    from .autograd.function import Function

    if isinstance(obj, type):
        return issubclass(obj, Function)
    return callable(obj) and not isinstance(obj, Module) and not hasattr(obj, "backward")


def _graph_pair(fn: Any):
    """(forward, backward) on arrays for a Function or a function of Tensors: forward wraps
    the floating inputs as Tensors that require a gradient; backward runs the graph."""
    from ._tensor import Tensor
    from .autograd.function import Function

    call = fn.apply if isinstance(fn, type) and issubclass(fn, Function) else fn
    state: dict = {}

    def forward(*arrays):
        ts = []
        for a in arrays:
            if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating):
                t = Tensor._wrap(a)
                t.requires_grad = True
                ts.append(t)
            else:
                ts.append(a)
        out = call(*ts)
        if not isinstance(out, Tensor) or not out.requires_grad:
            raise TypeError(
                f"gradcheck: {getattr(fn, '__name__', fn)!r} returned {type(out).__name__} without a graph; a "
                f"function to check must compute with cnnkit operations on Tensors (expected a cnnkit.nn.Module, "
                f"a Function, a function of Tensors, a (forward_fn, backward_fn) pair or an object with "
                f"forward/backward methods)"
            )
        state["inputs"], state["out"] = ts, out
        return out.data

    def backward(grad_out):
        ts, out = state["inputs"], state["out"]
        out.backward(np.asarray(grad_out), retain_graph=False)
        grads = tuple(None if t.grad is None else t.grad.data for t in ts if isinstance(t, Tensor))
        return grads if len(grads) != 1 else grads[0]

    return forward, backward


def gradcheck_loss(loss_fn: Module, pred: np.ndarray, target: np.ndarray, grad: Any = None,
                   eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4, seed: int = 0,
                   raise_exception: bool = True) -> bool | GradcheckReport:
    """Check ``loss_fn.backward()`` against finite differences of ``loss_fn(pred, target)``.

    Args:
        loss_fn: a loss such as ``CrossEntropyLoss(weight=w, label_smoothing=0.1)``.
        pred: predictions (cast to a float64 copy).
        target: targets; integer labels are passed unchanged, floating targets are cast to float64.
        grad: the upstream gradient: for 'none' an array of the loss's shape, else a scalar;
            default random (seeded by ``seed``), passed read-only for 'none'.
        eps, atol, rtol, seed, raise_exception: as in ``gradcheck``.

    Returns:
        As ``gradcheck``: True (or raises ``GradcheckError``), or a report.
    """
    pred = np.array(pred, dtype=np.float64)
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.floating):
        target = target.astype(np.float64)
    reduction = getattr(loss_fn, "reduction", "none")
    snapshot = _Snapshot(loss_fn)
    try:
        loss_fn.to(np.float64)
        if grad is None and reduction != "none":
            grad = float(np.random.default_rng(seed).standard_normal())
        return _run(_describe(loss_fn), lambda p: loss_fn(p, target), loss_fn.backward, [pred], [],
                    snapshot, grad, eps, atol, rtol, seed, raise_exception, True,
                    scalar_grad=reduction != "none")
    finally:
        snapshot.restore()
