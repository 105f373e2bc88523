"""Blocks whose state_dict keys follow torchvision while a container graph does the work.

torchvision names a block's layers by role (``squeeze``, ``expand1x1``, ``conv1``,
``downsample``), but the data flow (a parallel concatenation, a residual sum) is what our
containers ``Concat`` and ``Residual`` express, and they would name their children ``0``, ``1``,
... A ``Wired`` block registers its layers under torchvision's names and keeps a private
container graph over the very same layer objects for ``forward``. So the keys
match torchvision, and no model writes backward code (the graph records the operations).
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
