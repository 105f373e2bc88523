"""A minimal pool of worker threads for ``_parallel.parallel_for``.

Why not ``concurrent.futures.ThreadPoolExecutor``: a parallel region hands each worker
one call and waits for all of them, dozens of times per training step of a small network.
The executor's ``submit`` builds a future and a work item, takes two locks and goes through
a queue; ``result`` waits on a condition. That is ~40 us of Python per region on the
caller's thread (LeNet, batch 64: 6 regions, a quarter of a millisecond per step). Here a
worker owns two plain locks used as binary semaphores: the caller sets the worker's call
and releases ``go``; the worker runs it and releases ``done``.

One region at a time: a second thread that asks while a region runs waits for it (the
split of the work, hence the order of every sum, stays the same whoever calls).

With the compiled kernels on, the end of a region does not sleep: the worker also stores
the region's number into a flag from compiled code, and the caller spins on it without the
GIL before it takes ``done`` (``_jit_spin``: on VMs whose idle vCPUs halt, a sleeping
caller woke 40-60 us after the worker had finished).
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Sequence

from . import _jit_spin


class _Worker:
    """One thread that runs the calls handed to it, one at a time."""

    def __init__(self, name: str) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.call = None            # (fn, args, region) to run; None tells the thread to stop
        self.result = None
        self.error: BaseException | None = None
        self.flag = _jit_spin.new_flag()   # the last region done, when it is published
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            call = self.call
            if call is None:
                self.done.release()
                return
            fn, args, region = call
            try:
                self.result, self.error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, re-raised there
                self.result, self.error = None, exc
            self.call = None
            self.done.release()
            if region is not None:        # after done: the caller then finds it released
                _jit_spin.publish(self.flag, region)


def _wait(done: threading.Lock) -> BaseException | None:
    """Acquire ``done`` even when a signal handler raises meanwhile (Ctrl-C): returning
    before the worker has finished would leave its ``done`` released late, and the next
    region would take that for its own end. Returns the exception to raise afterwards."""
    interrupted = None
    while True:
        try:
            done.acquire()
            return interrupted
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller once all are done
            interrupted = interrupted or exc


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; the CPU count where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):     # not Linux
        return max(1, os.cpu_count() or 1)


class ThreadPool:
    """``workers`` threads that, with the caller's own, run one part of a region each.

    Args:
        workers: threads besides the caller's (>= 0).
        name: prefix of the threads' names.
    """

    def __init__(self, workers: int, name: str = "cnnkit") -> None:
        self._workers = [_Worker(f"{name}_{i}") for i in range(workers)]
        self._region = threading.Lock()
        self._regions = 0
        self.size = workers + 1
        # The spinning end only where every thread can have a CPU of its own.
        self._may_spin = self.size <= usable_cpus()

    def run(self, fn: Callable, parts: Sequence[tuple]) -> list:
        """``[fn(*parts[0]), fn(*parts[1]), ...]``: part 0 on the calling thread, the others
        on the workers (at most ``size`` parts). Waits for every part, then re-raises the
        first error (the caller's first), so that no worker still runs when this returns.

        Returns:
            The parts' results, in order.
        """
        if len(parts) > self.size:
            raise ValueError(f"ThreadPool.run: {len(parts)} parts for {self.size} threads")
        with self._region:
            busy = self._workers[:len(parts) - 1]
            self._regions += 1
            region = self._regions if busy and self._may_spin and _jit_spin.available() else None
            for worker, args in zip(busy, parts[1:]):
                worker.call = (fn, args, region)
                worker.go.release()
            first, error = None, None
            try:
                first = fn(*parts[0])
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the workers
                error = exc
            results = [first]
            interrupted = None
            for worker in busy:
                if region is not None:
                    _jit_spin.wait_for(worker.flag, region)
                interrupted = _wait(worker.done) or interrupted
                results.append(worker.result)
                if error is None and worker.error is not None:
                    error = worker.error
                worker.result = worker.error = None
            if interrupted is not None:
                raise interrupted
            if error is not None:
                raise error
            return results

    def shutdown(self) -> None:
        """Stop the workers (waits for each to leave its loop)."""
        with self._region:
            for worker in self._workers:
                worker.call = None
                worker.go.release()
            for worker in self._workers:
                _wait(worker.done)
                worker.thread.join()
            self._workers = []
            self.size = 1
