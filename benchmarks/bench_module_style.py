"""Sequential against nn.Module subclasses with F.* calls: the same four reference networks,
interleaved in one process, images/s and the ratio module / Sequential.

    python benchmarks/bench_module_style.py --threads 2 --batch-sizes 64
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_vs_torch as B  # noqa: E402
import functional_models as FM  # noqa: E402
import reference_models as R  # noqa: E402


def main(argv=None) -> int:
    import cnnkit
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=R.NAMES, choices=R.NAMES)
    ap.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    B.add_timing_args(ap, [64], rounds=5, min_time=0.3)
    args = ap.parse_args(argv)
    from cnnkit.nn import _parallel
    _parallel.set_num_threads(args.threads)
    print(f"threads {args.threads}; images/s, median of {args.rounds} interleaved rounds")
    print(f"{'model':<10} {'mode':<6} {'batch':>5} {'Sequential':>11} {'Module+F':>10} {'ratio':>6}")
    for name in args.models:
        for n in args.batch_sizes:
            for mode in args.modes:
                _, seq = B.cnnkit_steps(name, n, mode)
                cnnkit.manual_seed(0)
                _, mod = B.cnnkit_steps(name, n, mode, model=FM.MODELS[name]())
                rs, rm, _ = B.interleaved_rates(seq, mod, n, args.rounds, args.pause, args.min_time)
                print(f"{name:<10} {mode:<6} {n:>5} {rs:>11.0f} {rm:>10.0f} {rm / rs:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
