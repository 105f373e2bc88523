"""The backward pass: walk the recorded nodes from the loss to the leaves.

``run_backward(roots, grads)``:

1. collects the nodes reachable from the roots and counts, for each node, how many edges
   of the graph lead into it (its consumers);
2. runs a node's ``backward`` once every consumer has handed it its gradient (Kahn's
   topological order), adding the gradients of an output used several times;
3. adds the gradients that reach a leaf (a Tensor created by the user, or a Parameter) into
   its ``.grad``;
4. drops each node's saved arrays as soon as its backward ran (unless ``retain_graph``), so
   the activations of a step are freed during the backward pass.

Who owns an array matters for speed: a gradient a backward allocated is added into in
place; one that may be a view of another gradient (an identity, a reshape) is copied before
the first in-place add.
"""

from __future__ import annotations

import numpy as np

from .function import Node

__all__ = ["run_backward"]


def _owned(g: np.ndarray, incoming: tuple, earlier: list) -> bool:
    """Whether ``g`` (returned by a backward) is a new array nobody else holds."""
    if not g.flags.writeable:
        return False
    for e in earlier:
        if g is e:
            return False
    for gi in incoming:
        if np.may_share_memory(g, gi):
            return False
    return True


def _accumulate_leaf(leaf, g: np.ndarray, owned: bool) -> None:
    from .._tensor import Tensor

    if g.shape != leaf.data.shape:
        raise RuntimeError(f"backward: gradient of shape {g.shape} for a tensor of shape {leaf.data.shape}")
    for hook in leaf._hooks or ():
        result = hook(Tensor._wrap(g))
        if result is not None:
            g, owned = np.asarray(result.data if isinstance(result, Tensor) else result), False
    if leaf.grad is None:
        if not (owned and g.dtype == leaf.data.dtype and g.flags.c_contiguous):
            g = np.array(g, dtype=leaf.data.dtype, copy=True)
        leaf.grad = Tensor._wrap(g)
    else:
        leaf.grad.data += g


def _collect(roots: list[Node]) -> dict[Node, int]:
    """{node: number of graph edges into it} for every node reachable from ``roots``."""
    consumers: dict[Node, int] = {}
    stack = list(roots)
    for r in roots:
        consumers.setdefault(r, 0)
    while stack:
        node = stack.pop()
        if node.ctx is None:
            raise RuntimeError(
                f"backward: {node.name()} was already run and its saved arrays freed; call "
                f"backward(retain_graph=True) the first time to go through the graph twice"
            )
        for e in node.edges:
            if isinstance(e, tuple):
                child = e[0]
                if child not in consumers:
                    consumers[child] = 0
                    stack.append(child)
                consumers[child] += 1
    return consumers


def run_backward(roots: list, grads: list, retain_graph: bool = False) -> None:
    """Backpropagate ``grads`` (arrays) from the Tensors ``roots`` to every leaf.

    Args:
        roots: Tensors (outputs of recorded Functions, or leaves).
        grads: one array per root, of its shape and dtype.
        retain_graph: keep the saved arrays so that backward can run again.
    """
    pending: dict[Node, list] = {}
    start = []
    for t, g in zip(roots, grads):
        if t.grad_fn is None:
            if t.requires_grad:
                _accumulate_leaf(t, g, False)
            continue
        node = t.grad_fn
        slot = pending.setdefault(node, [None] * len(node.shapes))
        i = t._output_index
        slot[i] = (g, False) if slot[i] is None else (slot[i][0] + g, True)
        start.append(node)
    if not start:
        return
    consumers = _collect(start)
    ready = [n for n in dict.fromkeys(start) if consumers[n] == 0]
    while ready:
        node = ready.pop()
        slots = pending.pop(node, None) or [None] * len(node.shapes)
        grads_in = tuple(
            np.zeros(shape, dtype) if s is None else s[0]
            for s, shape, dtype in zip(slots, node.shapes, node.dtypes)
        )
        owned = tuple(s is not None and s[1] for s in slots)
        if node.hooks:
            grads_in, owned = _run_hooks(node, grads_in), (False,) * len(grads_in)
        if node.retained:
            _retain(node, grads_in)
        ctx = node.ctx
        # A backward may work in place on a gradient that nobody else holds.
        ctx.grads_owned = owned
        result = node.function.backward(ctx, *grads_in)
        if not isinstance(result, tuple):
            result = (result,)
        if len(result) < len(node.edges):
            # Options after the last differentiable input (dims, flags) need no gradient.
            if any(e is not None for e in node.edges[len(result):]):
                raise RuntimeError(
                    f"{node.function.__name__}.backward returned {len(result)} gradients for "
                    f"{len(node.edges)} inputs"
                )
            result = result + (None,) * (len(node.edges) - len(result))
        if not retain_graph:
            node.ctx = None
        earlier: list = []
        for edge, g in zip(node.edges, result):
            if edge is None:
                continue
            leaf = not isinstance(edge, tuple)
            if g is None:
                if not leaf:                   # an edge that carried no gradient still counts
                    child = edge[0]
                    consumers[child] -= 1
                    if consumers[child] == 0:
                        ready.append(child)
                continue
            if not isinstance(g, np.ndarray):
                g = np.asarray(g.data if hasattr(g, "grad_fn") else g)
            owned = _owned(g, grads_in, earlier)
            earlier.append(g)
            if leaf:
                _accumulate_leaf(edge, g, owned)
                continue
            child, index = edge
            if g.shape != child.shapes[index]:
                raise RuntimeError(
                    f"{node.function.__name__}.backward returned a gradient of shape {g.shape} for an "
                    f"input of shape {child.shapes[index]}"
                )
            slot = pending.get(child)
            if slot is None:
                slot = pending[child] = [None] * len(child.shapes)
            prev = slot[index]
            if prev is None:
                slot[index] = (g, owned)
            elif prev[1]:
                prev[0][...] += g
            else:
                slot[index] = (prev[0] + g, True)
            consumers[child] -= 1
            if consumers[child] == 0:
                ready.append(child)
        del grads_in, result, ctx


def _run_hooks(node: Node, grads: tuple) -> tuple:
    from .._tensor import Tensor

    out = list(grads)
    for index, hooks in node.hooks.items():
        for hook in hooks:
            r = hook(Tensor._wrap(out[index]))
            if r is not None:
                out[index] = np.asarray(r.data if isinstance(r, Tensor) else r)
    return tuple(out)


def _retain(node: Node, grads: tuple) -> None:
    from .._tensor import Tensor

    for index, ref in node.retained.items():
        t = ref()
        if t is None:
            continue
        g = grads[index]
        if t.grad is None:
            t.grad = Tensor._wrap(np.array(g, copy=True))
        else:
            t.grad.data += g
