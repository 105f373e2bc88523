"""A Module that writes its own ``forward(array)`` and ``backward(grad)`` (cnnkit's contract
before the autograd engine, and a way to write a layer that some users prefer) becomes one
node of the graph: its forward runs on the input's array, and its backward, called by the
engine, returns the input gradient and adds its parameters' gradients into their ``.grad``.

What the layer keeps for its backward in ``self._cache`` moves to the node, so the same
layer may be called several times before one backward (each call its own node).
"""

from __future__ import annotations

from ..autograd.function import Function

__all__ = ["ModuleWithBackward"]


class ModuleWithBackward(Function):
    @staticmethod
    def forward(ctx, x, *params, module):
        out = module.forward(x)
        ctx.module = module
        ctx.cache = module.__dict__.get("_cache")
        return out

    @staticmethod
    def backward(ctx, g):
        module = ctx.module
        saved = module.__dict__.get("_cache")
        module.__dict__["_cache"] = ctx.cache
        flag = module.__dict__.get("needs_input_grad")
        module.__dict__["needs_input_grad"] = ctx.needs_input_grad[0]
        try:
            gx = module.backward(g)
        finally:
            module.__dict__["_cache"] = saved
            if flag is None:
                module.__dict__.pop("needs_input_grad", None)
            else:
                module.__dict__["needs_input_grad"] = flag
        return (gx if ctx.needs_input_grad[0] else None,) + (None,) * (len(ctx.needs_input_grad) - 1)
