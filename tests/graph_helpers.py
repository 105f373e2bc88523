"""What the graph recorded: the nodes behind a Tensor, for tests of the fusion planner."""


def nodes(t):
    """Every node reachable from ``t`` (a Tensor, or a module called on an array: its last
    output), from the output back to the inputs, each once."""
    if hasattr(t, "_array_io"):
        t = t.__dict__["_array_io"][1]
    found, seen, stack = [], set(), [t.grad_fn] if t.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        stack.extend(e[0] for e in node.edges if isinstance(e, tuple))
    return found


def names(t):
    """The Functions behind ``t``, output first."""
    return [n.function.__name__ for n in nodes(t)]


def relu_backward_work(t):
    """For each ReLU, alone or fused into a convolution's output pass: True when its
    backward masks the gradient itself, False when the next layer folded that mask into its
    own backward."""
    work = []
    for n in nodes(t):
        if n.function.__name__ == "ReLU":
            work.append(n.ctx.mask is not None)
        elif n.function.__name__ == "Conv2d" and n.ctx.relu:
            work.append(n.ctx.saved_tensors[1] is not None)
    return work
