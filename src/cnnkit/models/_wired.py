"""Blocks whose state_dict keys follow torchvision while a container graph does the work.

torchvision names a block's layers by role (``squeeze``, ``expand1x1``, ``conv1``,
``downsample``), but the data flow (a parallel concatenation, a residual sum) is what our
containers ``Concat`` and ``Residual`` express, and they would name their children ``0``, ``1``,
... A ``Wired`` block registers its layers under torchvision's names and keeps a private
container graph over the very same layer objects for ``forward`` / ``backward``. So the keys
match torchvision, the chain rule stays in the containers, and no model writes backward code.
"""

from __future__ import annotations

import numpy as np

from ..nn.module import Module


class Wired(Module):
    """Base of blocks that run a private graph built from their registered children.

    Subclasses register their layers as attributes (these give the state_dict keys), then
    call ``self._wire(graph)`` with a container built from those same layer objects.
    """

    def _wire(self, graph: Module) -> None:
        # object.__setattr__: the graph must not be registered, or every parameter would
        # appear a second time under the container's numeric names.
        object.__setattr__(self, "_graph", graph)
        graph.train(self.training)

    def forward(self, x: np.ndarray) -> np.ndarray:
        # train() / eval() on an outer model walks registered modules only, so the graph's own
        # containers learn the mode here (its layers are the registered ones: already set).
        if self._graph.training != self.training:
            self._graph.train(self.training)
        return self._graph(x)

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        return self._graph.backward(grad_out)

    # A container that needs no input gradient from this block says so through this flag;
    # the graph passes it on to the layers that see the block's input.
    @property
    def needs_input_grad(self) -> bool:
        graph = self.__dict__.get("_graph")
        return True if graph is None else graph.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self._graph.needs_input_grad = bool(value)
