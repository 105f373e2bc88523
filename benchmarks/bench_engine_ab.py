"""Two cnnkit source trees side by side: the same reference networks (as Sequential) timed
in alternating child processes, so that a change to the engine is measured against the
commit before it on the same machine in one run.

    git worktree add /tmp/cnnkit-before <commit>
    python benchmarks/bench_engine_ab.py /tmp/cnnkit-before . --threads 2 --batch-sizes 64

Each child imports cnnkit from one tree's ``src`` (a tree without ``cnnkit.Tensor`` trains
with ``model.backward(loss_fn.backward())``, one with it with ``loss.backward()``), warms
up, and prints images/s; the parent alternates the trees round by round and reports medians
and the ratio after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def child(src: str, name: str, n: int, mode: str, threads: int, min_time: float) -> float:
    sys.path.insert(0, os.path.join(os.path.abspath(src), "src"))
    sys.path.insert(1, HERE)
    import time

    import cnnkit
    import cnnkit.nn as nn
    import cnnkit.optim as optim
    import reference_models as R
    from cnnkit.nn import _parallel

    assert cnnkit.__file__.startswith(os.path.abspath(src)), cnnkit.__file__
    _parallel.set_num_threads(threads)
    cnnkit.manual_seed(0)
    model = R.build_cnnkit(name)
    x, y = R.batch(name, n)
    graph = hasattr(cnnkit, "Tensor")
    if graph:
        x, y = cnnkit.from_numpy(x), cnnkit.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if mode == "infer":
        model.eval()

        def step():
            with cnnkit.no_grad():
                model(x)
    else:
        def step():
            opt.zero_grad()
            if graph:
                loss_fn(model(x), y).backward()
            else:
                loss_fn(model(x), y)
                model.backward(loss_fn.backward())
            opt.step()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    one = time.perf_counter()
    step()
    one = time.perf_counter() - one
    steps = max(2, int(min_time / max(one, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="source tree (a checkout) of the commit before")
    ap.add_argument("after", help="source tree of the change")
    ap.add_argument("--models", nargs="+", default=["lenet", "seed000", "conv4", "vgg_cifar"])
    ap.add_argument("--modes", nargs="+", default=["train", "infer"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per timing")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        src, name, n, mode = args.child
        print(json.dumps(child(src, name, int(n), mode, args.threads, args.min_time)))
        return 0
    print(f"threads {args.threads}; images/s, median of {args.rounds} alternating rounds")
    print(f"{'model':<10} {'mode':<6} {'batch':>5} {'before':>9} {'after':>9} {'ratio':>6}")
    for name in args.models:
        for n in args.batch_sizes:
            for mode in args.modes:
                rates = {"before": [], "after": []}
                for r in range(args.rounds):
                    order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                    for which in order:
                        src = getattr(args, which)
                        cmd = [sys.executable, os.path.abspath(__file__), args.before, args.after, "--threads",
                               str(args.threads), "--min-time", str(args.min_time), "--child", src, name, str(n), mode]
                        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                        rates[which].append(float(out.strip().splitlines()[-1]))
                b, a = float(np.median(rates["before"])), float(np.median(rates["after"]))
                print(f"{name:<10} {mode:<6} {n:>5} {b:>9.0f} {a:>9.0f} {a / b:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
