"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..nn._parallel import get_num_threads, parallel_for
from .optimizer import Optimizer, _check_range, decayed_gradient

__all__ = ["SGD"]

#: Elements per slice of a parameter's update: 4 slices of 512 KB stay in a core's L2.
#: Measured (VGG's 4.7 M parameters, momentum, one thread): whole arrays 6.0 ms, slices of
#: 64 K or 128 K elements 4.9 ms; below ~16 K elements the Python cost per slice dominates.
CHUNK_ELEMENTS = 1 << 17


def _even_pieces(params: list, n: int) -> list[list[tuple[Any, int, int]]]:
    """``params`` cut into at most ``n`` lists of ``(param, start, stop)`` element ranges of
    about equal total size, in parameter order; a parameter is cut only where a list fills.

    Why ranges, not whole parameters: one Linear weight is often most of a network (the
    4-conv net's 3136 x 256 is 92 % of it), and whole-parameter bins left one thread with it
    (4-conv, 2 threads: SGD-momentum step 1.4 ms with bins, see ``benchmarks/``)."""
    total = sum(p.data.size for p in params)
    n = max(1, min(n, total))
    target = -(-total // n)
    bins: list[list[tuple[Any, int, int]]] = [[]]
    room = target
    for p in params:
        start, size = 0, p.data.size
        while start < size:
            if room == 0:
                bins.append([])
                room = target
            stop = min(size, start + room)
            bins[-1].append((p, start, stop))
            room -= stop - start
            start = stop
    return bins


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's formulation (``torch.optim.SGD``).

    For each parameter ``p`` with gradient ``g`` (``-g`` when ``maximize``)::

        g = g + weight_decay * p
        buf = g                                  (first step)
        buf = momentum * buf + (1 - dampening) * g   (later steps)
        g = g + momentum * buf  if nesterov else buf     (only when momentum != 0)
        p = p - lr * g

    Args:
        params: parameters or parameter groups (see ``Optimizer``).
        lr: learning rate (default 1e-3, as in torch 2.x).
        momentum: momentum factor (default 0).
        dampening: dampening of the momentum (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: ascend instead of descend.

    State per parameter: ``momentum_buffer`` (only when momentum != 0).

    Shape:
        Updates each ``Parameter.data`` in place; dtypes are kept (float32 stays float32).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        _check_range("SGD", "momentum", group["momentum"], 0.0)
        _check_range("SGD", "weight_decay", group["weight_decay"], 0.0)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"SGD: nesterov=True requires momentum > 0 and dampening = 0, "
                f"got momentum={group['momentum']}, dampening={group['dampening']}"
            )

    def _update(self, group: dict[str, Any], params: list) -> None:
        # Hyperparameters as Python floats: NumPy keeps them "weak", so float32 stays float32.
        lr = float(group["lr"])
        momentum = float(group["momentum"])
        dampening = float(group["dampening"])
        wd = float(group["weight_decay"])
        nesterov = bool(group["nesterov"])
        maximize = bool(group["maximize"])
        # The parameters' elements are independent: split them over the kernel threads in
        # ranges of about equal size (NumPy's elementwise loops use one core).
        first = {}
        if momentum != 0:
            for p in params:  # the state is created in parameter order (state_dict's order)
                state = self.state.setdefault(p, {})
                # Created here, before the threads share out its ranges.
                first[p] = "momentum_buffer" not in state
                if first[p]:
                    state["momentum_buffer"] = np.empty_like(p.data)
        bins = _even_pieces(params, get_num_threads())
        # Flattened once: for a non-C-contiguous gradient reshape copies, once per parameter
        # rather than once per range.
        flat_grads = {p: p.grad.data.reshape(-1) for p in params}

        def run(start, stop):
            for b in bins[start:stop]:
                for p, lo, hi in b:
                    self._update_range(p, flat_grads[p], lo, hi, first.get(p, False), lr, momentum,
                                       dampening, wd, nesterov, maximize)

        parallel_for(len(bins), run, 4 * sum(p.data.nbytes for p in params))

    def _update_range(self, p: Any, flat_grad: np.ndarray, start: int, stop: int, first: bool, lr,
                      momentum, dampening, wd, nesterov, maximize) -> None:
        """The update of elements [start, stop) of ``p`` (flat C order); ``flat_grad``: its
        gradient flattened in that order; ``first``: its momentum buffer was just created
        (holds garbage, to be set to the gradient)."""
        # Chunk by chunk: the three or four passes of the update (momentum, add, scale,
        # subtract) then run on slices that stay in the core's L2 cache, so the parameter,
        # gradient and buffer are read from memory once instead of once per pass.
        data = p.data.reshape(-1)[start:stop]       # views: Parameter.data is C-contiguous
        grad = flat_grad[start:stop]                # read only
        buf = self.state[p]["momentum_buffer"].reshape(-1)[start:stop] if momentum != 0 else None
        n = data.size
        chunk = CHUNK_ELEMENTS
        t0 = self._flat_temp(data.dtype, 0, min(n, chunk))
        if buf is not None and not first and dampening == 0 and not nesterov and wd == 0 and not maximize:
            # The usual configuration (momentum only), inlined: the Python cost per slice
            # holds the GIL, which the other kernel thread waits for.
            for lo in range(0, n, chunk):
                b = buf[lo:lo + chunk]
                b *= momentum
                b += grad[lo:lo + chunk]
                t = t0[:b.size]
                np.multiply(b, lr, out=t)
                data[lo:lo + chunk] -= t
            return
        t1 = self._flat_temp(data.dtype, 1, min(n, chunk)) if (nesterov or dampening != 0) else None
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            m = hi - lo
            _update_chunk(data[lo:hi], grad[lo:hi], None if buf is None else buf[lo:hi], first,
                          t0[:m], None if t1 is None else t1[:m],
                          lr, momentum, dampening, wd, nesterov, maximize)


def _update_chunk(p, grad, buf, first, t0, t1, lr, momentum, dampening, wd, nesterov, maximize) -> None:
    """One slice of the SGD update, in place on ``p`` (and ``buf``); ``grad`` is only read.
    ``t0`` / ``t1``: scratch slices of the same length (``t1`` only for Nesterov or dampening)."""
    g = decayed_gradient(p, grad, wd, maximize, out=t0)
    used = 0 if g is t0 else -1  # which scratch slot holds g (-1: none)
    if buf is not None:
        if first:
            np.copyto(buf, g)
        else:
            buf *= momentum
            if dampening == 0:
                buf += g
            else:
                np.multiply(g, 1.0 - dampening, out=t1)
                buf += t1
        if nesterov:
            # g + momentum * buf: slot 1 takes momentum * buf, then g is added into it.
            np.multiply(buf, momentum, out=t1)
            t1 += g
            g, used = t1, 1
        else:
            g = buf
            used = -1
    # p -= lr * g; reuse g's own scratch slot when it has one.
    step = g if used >= 0 else t0
    np.multiply(g, lr, out=step)
    p -= step
