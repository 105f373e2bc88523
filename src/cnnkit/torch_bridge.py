"""Run a cnnkit model inside a PyTorch program.

``to_torch(model)`` wraps a cnnkit ``Module`` as a ``torch.nn.Module``: its forward runs
cnnkit's forward on the input's array, and its backward, a ``torch.autograd.Function``,
runs cnnkit's graph backward and hands PyTorch the gradients of the input and of every
parameter. The wrapper's ``torch.nn.Parameter``s share memory with the cnnkit parameters,
so a PyTorch optimizer stepping them trains the cnnkit model in place::

    import torch
    import cnnkit
    from cnnkit.torch_bridge import to_torch

    backbone = to_torch(cnnkit.models.create("lenet", num_classes=10))
    head = torch.nn.Linear(10, 2)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    loss = torch.nn.functional.cross_entropy(head(backbone(images)), labels)
    loss.backward()            # through PyTorch's head, then cnnkit's own backward
    opt.step()

PyTorch is imported only when ``to_torch`` is called (cnnkit never needs it). CPU float
tensors only. After ``model.load_state_dict`` on the cnnkit side, call ``to_torch`` again
(loading replaces the parameter arrays the wrapper shares).
"""

from __future__ import annotations

import numpy as np

from . import autograd
from ._tensor import Tensor

__all__ = ["to_torch"]


def to_torch(model):
    """A ``torch.nn.Module`` that runs ``model`` (a cnnkit Module) forward and backward.

    Args:
        model: a cnnkit ``nn.Module`` taking one Tensor.

    Returns:
        A ``torch.nn.Module``; its parameters share memory with ``model``'s.

    Shape:
        whatever ``model`` takes and returns (one tensor in, one out).
    """
    import torch

    class _CnnkitFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *params):
            xt = Tensor._wrap(x.detach().cpu().numpy())
            xt.requires_grad = bool(x.requires_grad) and np.issubdtype(xt.dtype, np.floating)
            with autograd.enable_grad():
                out = model(xt)
            ctx.cnnkit = (xt, out)
            return torch.from_numpy(np.array(out.data, copy=True))

        @staticmethod
        def backward(ctx, grad_out):
            xt, out = ctx.cnnkit
            ctx.cnnkit = None
            cn_params = list(model.parameters())
            saved = [p.grad for p in cn_params]
            for p in cn_params:
                p.grad = None
            try:
                if out.requires_grad:
                    out.backward(np.ascontiguousarray(grad_out.detach().cpu().numpy(), dtype=out.dtype))
                grads = [None if p.grad is None else torch.from_numpy(p.grad.data) for p in cn_params]
            finally:
                for p, g in zip(cn_params, saved):
                    p.grad = g
            gx = None if xt.grad is None else torch.from_numpy(xt.grad.data)
            return (gx, *grads)

    class CnnkitModule(torch.nn.Module):
        """A cnnkit model as a PyTorch module (see ``cnnkit.torch_bridge``)."""

        def __init__(self):
            super().__init__()
            self.cnnkit_model = model
            self.shared = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.from_numpy(p.data), requires_grad=p.requires_grad)
                 for p in model.parameters()])

        def forward(self, x):
            return _CnnkitFunction.apply(x, *self.shared)

        def train(self, mode: bool = True):
            super().train(mode)
            model.train(mode)
            return self

    return CnnkitModule()
