"""Speed of cnnkit against PyTorch (CPU, float32) on the reference networks, in ONE process.

    python benchmarks/bench_vs_torch.py                      # all models, batch 64 and 256
    python benchmarks/bench_vs_torch.py --models lenet --batch-sizes 64 --rounds 9

Training images/s: forward, CrossEntropy loss, backward, SGD (momentum 0.9) step.
Inference images/s: eval mode, forward only (cnnkit under ``cnnkit.no_grad()``, torch under
``torch.inference_mode()``).
Each round times a few steps of one library, pauses, then the other (the order alternates
between rounds); the table shows the medians over rounds and the ratio cnnkit / PyTorch
(> 1: cnnkit is faster). Both libraries use ``--threads`` threads (PyTorch intra-op; cnnkit's
kernel pool and NumPy's OpenBLAS).
Absolute numbers on a shared machine are noisy; the ratio of interleaved runs is not.
glibc's malloc thresholds are pinned first (``malloc_state``; ``--malloc default`` keeps
glibc's dynamic ones): PyTorch's speed otherwise depends on what the process freed before,
and moved by up to 1.6x between runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models as R  # noqa: E402
from malloc_state import pin_malloc_thresholds  # noqa: E402


def cnnkit_steps(name, n, mode, seed=0, model=None):
    """(setup model, one-step function) for cnnkit; ``model`` defaults to the Sequential of
    ``reference_models`` (built after seeding)."""
    import cnnkit
    import cnnkit.nn as nn
    import cnnkit.optim as optim
    cnnkit.manual_seed(seed)
    model = R.build_cnnkit(name) if model is None else model
    x, y = (cnnkit.from_numpy(a) for a in R.batch(name, n))
    if mode == "infer":
        model.eval()

        def infer():
            with cnnkit.no_grad():  # the counterpart of torch.inference_mode()
                model(x)

        return model, infer
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return model, step


def torch_steps(name, n, mode, cnnkit_model):
    import torch
    model = R.build_torch(name, cnnkit_model)
    x, y = (torch.from_numpy(a) for a in R.batch(name, n))
    if mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode():
                model(x)

        return infer
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def time_steps(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - t0


def interleaved_rates(ck, th, n: int, rounds: int, pause: float, min_time: float):
    """Median images/s of the two one-batch step functions: warm-up, then ``rounds`` rounds
    that time each library for about ``min_time`` seconds, a pause and one untimed step
    before each timing and the order alternating between rounds. Returns (cnnkit, torch,
    steps per timing)."""
    for fn in (ck, th, ck, th):  # warm up: workspaces, allocators, thread pools
        fn()
    # Steps per timing: enough for ~min_time seconds of the slower library.
    one = max(time_steps(ck, 1), time_steps(th, 1))
    steps = max(1, int(np.ceil(min_time / max(one, 1e-6))))
    rates = {"cnnkit": [], "torch": []}
    for r in range(rounds):
        order = [("cnnkit", ck), ("torch", th)]
        if r % 2:
            order.reverse()
        for lib, fn in order:
            time.sleep(pause)
            # One untimed step first: after the pause the cores have been idle, and the
            # first step after idling ran up to 1.2x slower here (both libraries).
            fn()
            rates[lib].append(steps * n / time_steps(fn, steps))
    return float(np.median(rates["cnnkit"])), float(np.median(rates["torch"])), steps


def set_threads(threads: int) -> None:
    """The same number of threads for both libraries: PyTorch's intra-op pool, cnnkit's
    kernel pool and NumPy's own OpenBLAS (GEMMs outside the pool)."""
    import torch
    from cnnkit.nn import _parallel
    torch.set_num_threads(threads)
    _parallel.set_num_threads(threads)
    if _parallel._blas is not None:
        _parallel._blas[0](threads)


def bench(name, n, mode, rounds, pause, min_time):
    model, ck = cnnkit_steps(name, n, mode)
    th = torch_steps(name, n, mode, model)
    return interleaved_rates(ck, th, n, rounds, pause, min_time)


def add_timing_args(ap: argparse.ArgumentParser, batch_sizes, rounds: int, min_time: float) -> None:
    """The options every side-by-side benchmark takes (batch sizes, rounds, pause, threads)."""
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=batch_sizes)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between the libraries' timings")
    ap.add_argument("--min-time", type=float, default=min_time, help="seconds per timing (sets the steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--malloc", choices=["pinned", "default"], default="pinned",
                    help="pin glibc's malloc thresholds (see malloc_state.py) or keep its dynamic ones")


def set_malloc(args) -> str:
    """Apply ``--malloc``; returns the line for the header."""
    if args.malloc == "pinned":
        return pin_malloc_thresholds()
    return "glibc malloc: default (dynamic) thresholds"


def run_conditions(args) -> str:
    """What a result table depends on: torch's version, threads, rounds, the machine's load
    the GEMM cnnkit runs on (``cnnkit.nn.gemm_backend()``) and whether its compiled kernels
    are on (``nn._jit``)."""
    import torch
    import cnnkit.nn
    from cnnkit.nn import _jit

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gemm, why = cnnkit.nn.gemm_backend()
    return (f"PyTorch {torch.__version__} (CPU, float32), {args.threads} threads, {args.rounds} rounds, "
            f"load average {load:.1f}; cnnkit's GEMM: {gemm} ({why}); compiled kernels: "
            f"{'on' if _jit.enabled() else 'off'} ({_jit.status()[1]})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=R.NAMES, choices=R.NAMES)
    ap.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    add_timing_args(ap, batch_sizes=[64, 256], rounds=5, min_time=0.4)
    args = ap.parse_args(argv)

    malloc = set_malloc(args)
    set_threads(args.threads)
    print(f"# cnnkit vs {run_conditions(args)}; {malloc}\n")
    print("| model | batch | mode | cnnkit img/s | PyTorch img/s | ratio |")
    print("|---|---:|---|---:|---:|---:|")
    for name in args.models:
        for n in args.batch_sizes:
            for mode in args.modes:
                c, t, steps = bench(name, n, mode, args.rounds, args.pause, args.min_time)
                print(f"| {name} | {n} | {mode} | {c:,.0f} | {t:,.0f} | {c / t:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
