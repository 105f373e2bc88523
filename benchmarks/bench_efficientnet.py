"""EfficientNet-Lite0 inference speed of cnnkit against the reference PyTorch model, in ONE process.

    python benchmarks/bench_efficientnet.py                       # batch 1 and 8, 2 threads
    python benchmarks/bench_efficientnet.py --batch-sizes 1 8 32 --threads 1 --rounds 9

cnnkit: ``cnnkit.models.efficientnet_lite0(pretrained=False)`` in eval mode, called inside
``cnnkit.no_grad()`` (each layer frees its forward cache). PyTorch: the reference model of
the package ``efficientnet-lite-pytorch`` (``EfficientNet.from_name('efficientnet-lite0')``)
with cnnkit's weights copied in (same keys), eval mode, under ``torch.no_grad()``.
Input: float32 (N, 3, 224, 224). Each round times a few forward passes of one library,
pauses, then the other (the order alternates between rounds); the table shows the medians
over rounds and the ratio cnnkit / PyTorch (> 1: cnnkit is faster). Both libraries use
``--threads`` threads (PyTorch intra-op; cnnkit's kernel pool and NumPy's OpenBLAS).
Absolute numbers on a shared machine are noisy; the ratio of interleaved runs is less so.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vs_torch import (add_timing_args, interleaved_rates, run_conditions, set_malloc,  # noqa: E402
                            set_threads)

IMAGE_SIZE = 224


def build_models():
    """(cnnkit model, PyTorch model) with identical weights, both in eval mode."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    import cnnkit
    cnnkit.manual_seed(0)
    ours = cnnkit.models.efficientnet_lite0(pretrained=False).eval()
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ours.state_dict().items()})
    return ours, ref.eval()


def make_steps(ours, ref, n: int):
    import torch

    import cnnkit
    x = np.random.default_rng(0).standard_normal((n, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    xt = torch.from_numpy(x.copy())

    def ck():
        with cnnkit.no_grad():
            return ours(x)

    def th():
        with torch.no_grad():
            return ref(xt)

    # Same weights, same input: the logits must agree (guards against benchmarking a broken model).
    a, b = ck(), th().numpy()
    assert a.dtype == np.float32, f"cnnkit returned {a.dtype}, expected float32"
    err = float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-12)
    assert err < 1e-3, f"cnnkit and PyTorch logits differ (relative error {err:.2e})"
    return ck, th


def bench(ours, ref, n, rounds, pause, min_time):
    ck, th = make_steps(ours, ref, n)
    cnnkit_rate, torch_rate, _ = interleaved_rates(ck, th, n, rounds, pause, min_time)
    return cnnkit_rate, torch_rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_args(ap, batch_sizes=[1, 8], rounds=5, min_time=0.5)
    args = ap.parse_args(argv)

    malloc = set_malloc(args)
    set_threads(args.threads)
    ours, ref = build_models()
    print(f"# EfficientNet-Lite0 inference {IMAGE_SIZE}x{IMAGE_SIZE}, cnnkit vs {run_conditions(args)}; {malloc}\n")
    print("| batch | cnnkit img/s | PyTorch img/s | ratio |")
    print("|---:|---:|---:|---:|")
    for n in args.batch_sizes:
        c, t = bench(ours, ref, n, args.rounds, args.pause, args.min_time)
        print(f"| {n} | {c:,.1f} | {t:,.1f} | {c / t:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
