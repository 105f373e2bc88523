"""Data-parallel speed: measured steps and allreduces, and the scaling model of docs/distributed.md.

    # images/s of one process (2 threads) against 2 ranks x 1 thread, same global batch:
    python benchmarks/bench_distributed.py step --threads 2
    mpiexec -n 2 python benchmarks/bench_distributed.py step
    # per-step time and gradient size of the zoo models, and the predicted speed-up on N machines:
    python benchmarks/bench_distributed.py zoo

``step`` trains fashion_cnn on random 28x28 images (global batch 128 split over the ranks) and
reports images/s, the time spent in the step's allreduce call (which includes waiting for the
slowest rank) and the allreduce alone (ranks lined up by a barrier first).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# The scaling model's network: link speeds and per-message latency of a ring step.
LINKS = {"10 Gbit/s": (10e9 / 8, 30e-6), "100 Gbit/s": (100e9 / 8, 5e-6)}
MACHINES = (2, 8, 64)


def ring_allreduce_seconds(nbytes: int, n: int, bandwidth: float, latency: float) -> float:
    """A ring allreduce of ``nbytes`` over ``n`` machines: 2(n-1) steps, each sending nbytes/n."""
    if n < 2:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def _train_setup(name: str, shape: tuple, batch: int):
    import cnnkit
    from cnnkit import manual_seed, nn, optim
    from cnnkit.runner import build_model

    manual_seed(0)
    model = build_model(name, 1000 if shape[1] == 224 else 10, list(shape))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    g = np.random.default_rng(0)
    x = cnnkit.from_numpy(g.standard_normal((batch, *shape)).astype(np.float32))
    y = cnnkit.from_numpy(g.integers(0, 10, batch))
    return model, opt, loss_fn, x, y


def _step(model, opt, loss_fn, x, y, reduce=None):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    if reduce is not None:
        reduce()
    opt.step()
    return loss


def cmd_step(args) -> None:
    from cnnkit.distributed import get_comm
    from cnnkit.distributed.allreduce import GradientAllreduce
    from cnnkit.distributed.sampler import shard_bounds
    from cnnkit.nn import _parallel

    comm = get_comm()
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    if args.threads:
        _parallel.set_num_threads(args.threads)
    lo, hi = shard_bounds(args.batch, rank, size)
    model, opt, loss_fn, x, y = _train_setup("fashion_cnn", (1, 28, 28), hi - lo)
    model.train()
    reducer = None if comm is None else GradientAllreduce(comm, model)
    reduce = None if reducer is None else (lambda: reducer((hi - lo) / args.batch, [0, 0, hi - lo, 0]))
    for _ in range(3):
        _step(model, opt, loss_fn, x, y, reduce)
    if reducer is not None:
        reducer.total_seconds, reducer.calls = 0.0, 0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        _step(model, opt, loss_fn, x, y, reduce)
    elapsed = time.perf_counter() - t0
    line = (f"fashion_cnn, global batch {args.batch}: {size} rank(s) x {_parallel.get_num_threads()} thread(s): "
            f"{args.batch * args.steps / elapsed:.0f} images/s, {1e3 * elapsed / args.steps:.1f} ms/step")
    if reducer is not None:
        pure = []
        for _ in range(20):
            comm.world.Barrier()
            t = time.perf_counter()
            comm.allreduce_sum(reducer.flat)
            pure.append(time.perf_counter() - t)
        line += (f"; allreduce of {reducer.nbytes / 1e6:.2f} MB: {1e3 * reducer.total_seconds / reducer.calls:.2f} "
                 f"ms/step in the step (waiting included), {1e3 * float(np.median(pure)):.2f} ms alone")
    if rank == 0:
        print(line)


ZOO = [  # name, input shape, per-machine batch
    ("lenet", (1, 28, 28), 64), ("fashion_cnn", (1, 28, 28), 128), ("scratch_cnn", (3, 32, 32), 64),
    ("alexnet_cifar", (3, 32, 32), 64), ("vgg_cifar", (3, 32, 32), 64),
    ("squeezenet1_1", (3, 224, 224), 8), ("efficientnet_lite0", (3, 224, 224), 8),
    ("resnet18", (3, 224, 224), 8), ("vgg11", (3, 224, 224), 8), ("vgg16", (3, 224, 224), 8),
]


def cmd_zoo(args) -> None:
    names = args.models.split(",") if args.models else [z[0] for z in ZOO]
    header = "| model | input | batch/machine | parameters | gradient MB | step (s) | "
    header += " | ".join(f"allreduce {n} @ {link} (ms)" for link in LINKS for n in (8, 64))
    header += " | " + " | ".join(f"speed-up {n} @ {link}" for link in LINKS for n in MACHINES) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, shape, batch in ZOO:
        if name not in names:
            continue
        model, opt, loss_fn, x, y = _train_setup(name, shape, batch)
        model.train()
        _step(model, opt, loss_fn, x, y)
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            _step(model, opt, loss_fn, x, y)
            times.append(time.perf_counter() - t)
        step = float(np.median(times))
        nbytes = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        cells = [name, "x".join(map(str, shape)), str(batch), f"{nbytes // 4:,}", f"{nbytes / 1e6:.1f}", f"{step:.3f}"]
        for bw, lat in LINKS.values():
            cells += [f"{1e3 * ring_allreduce_seconds(nbytes, n, bw, lat):.1f}" for n in (8, 64)]
        for bw, lat in LINKS.values():
            # Each machine keeps its batch (the global batch grows with N); no overlap of
            # communication with the backward pass: speed-up = N * step / (step + allreduce).
            cells += [f"{n * step / (step + ring_allreduce_seconds(nbytes, n, bw, lat)):.1f}" for n in MACHINES]
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("step")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="kernel threads (default: cores / ranks)")
    p.set_defaults(func=cmd_step)
    p = sub.add_parser("zoo")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--models", help="comma-separated subset")
    p.set_defaults(func=cmd_zoo)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
