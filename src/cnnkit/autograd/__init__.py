"""cnnkit.autograd: the define-by-run engine.

- ``Function`` (and its ``ctx``): one operation with a hand-written forward and backward;
- ``backward(tensors, grad_tensors)`` / ``Tensor.backward()``: the reverse pass (``engine``);
- ``no_grad`` / ``enable_grad`` / ``set_grad_enabled``: grad mode;
- ``gradcheck``: finite differences against a Function, a Module or any function of Tensors.
"""

from .function import Function, FunctionCtx, Node
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled

__all__ = ["Function", "FunctionCtx", "Node", "backward", "grad", "no_grad", "enable_grad",
           "set_grad_enabled", "is_grad_enabled", "inference_mode", "gradcheck"]


def backward(tensors, grad_tensors=None, retain_graph: bool = False) -> None:
    """Backpropagate from several tensors at once (``torch.autograd.backward``)."""
    from .._tensor import Tensor

    if isinstance(tensors, Tensor):
        tensors = [tensors]
    if grad_tensors is None:
        grad_tensors = [None] * len(tensors)
    elif isinstance(grad_tensors, Tensor):
        grad_tensors = [grad_tensors]
    from .engine import run_backward
    import numpy as np

    grads = [np.ones(t.data.shape, t.data.dtype) if g is None else np.asarray(getattr(g, "data", g), t.data.dtype)
             for t, g in zip(tensors, grad_tensors)]
    run_backward(list(tensors), grads, retain_graph=retain_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool = False, allow_unused: bool = False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned instead of added into
    ``.grad`` (``torch.autograd.grad``; first order only)."""
    from .._tensor import Tensor

    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    saved = [t.grad for t in inputs]
    for t in inputs:
        t.grad = None
    try:
        backward(outputs, grad_outputs, retain_graph=retain_graph)
        result = tuple(t.grad for t in inputs)
    finally:
        for t, g in zip(inputs, saved):
            t.grad = g
    if not allow_unused and any(r is None for r in result):
        raise RuntimeError("one of the differentiated Tensors was not used in the graph (pass allow_unused=True)")
    return result


def __getattr__(name):
    if name == "gradcheck":
        from ..gradient_check import gradcheck

        return gradcheck
    raise AttributeError(f"module 'cnnkit.autograd' has no attribute {name!r}")
