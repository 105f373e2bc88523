"""Per-layer profile of a reference network: forward and backward time of every layer in
cnnkit (and, when torch is installed, of the same PyTorch layer on the same data), with the
GFLOP/s of the convolution and linear layers against the GEMM peak of ``np.matmul``
measured in the same run.

    python benchmarks/profile_layers.py --model vgg_cifar --batch 64
    OPENBLAS_NUM_THREADS=1 python benchmarks/profile_layers.py --threads 1 --clock thread
    python benchmarks/profile_layers.py --model conv4 --blas-compare   # NumPy vs MKL GEMMs

Times are medians of ``--repeats`` calls. Layers are timed in isolation on the
activations of a real forward pass, so caches are warm for both libraries alike.
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


CLOCK = time.perf_counter


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return float(np.median(times))


def blas_times(fn, repeats: int) -> dict:
    """Median time of ``fn`` with the NumPy and with the MKL GEMM backend (``nn._gemm``),
    the calls interleaved so that both see the same machine load."""
    from cnnkit.nn import _gemm
    times = {"numpy": [], "mkl": []}
    for name in times:
        _gemm.set_backend(name)
        fn()
    for r in range(repeats):
        for name in (("numpy", "mkl") if r % 2 == 0 else ("mkl", "numpy")):
            _gemm.set_backend(name)
            t0 = CLOCK()
            fn()
            times[name].append(CLOCK() - t0)
    _gemm.set_backend(None)
    return {name: float(np.median(v)) for name, v in times.items()}


def print_blas_table(layers, acts, grads, repeats: int) -> None:
    """Per layer: forward and backward ms with NumPy's GEMM and with MKL's."""
    print("| layer | output | numpy fwd ms | mkl fwd ms | numpy bwd ms | mkl bwd ms | fwd ratio | bwd ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    total = np.zeros(4)
    for i, layer in enumerate(layers):
        xin, gout = acts[i], grads[i]
        tf = blas_times(lambda: layer(xin), repeats)
        layer(xin)
        tb = blas_times(lambda: layer.backward(gout), repeats)
        row = [tf["numpy"], tf["mkl"], tb["numpy"], tb["mkl"]]
        total += row
        print(f"| {i}:{type(layer).__name__} | {tuple(acts[i + 1].shape[1:])} | "
              + " | ".join(f"{v * 1e3:.2f}" for v in row)
              + f" | {row[0] / row[1]:.2f} | {row[2] / row[3]:.2f} |")
    print(f"| total | | " + " | ".join(f"{v * 1e3:.2f}" for v in total)
          + f" | {total[0] / total[1]:.2f} | {total[2] / total[3]:.2f} |")


def gemm_peak(repeats: int = 5) -> float:
    """GFLOP/s of a large float32 np.matmul (the ceiling for im2col + GEMM)."""
    rng = np.random.default_rng(0)
    a = rng.random((4096, 1152), dtype=np.float32)
    b = rng.random((1152, 256), dtype=np.float32)
    out = np.empty((4096, 256), np.float32)
    t = median_time(lambda: np.matmul(a, b, out=out), repeats)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / t / 1e9


def layer_flops(layer, x_shape, out_shape) -> float:
    """Forward multiply-adds * 2 of a conv / linear layer (0 for others)."""
    name = type(layer).__name__
    if name == "Conv2d":
        kh, kw = layer.kernel_size
        return 2.0 * np.prod(out_shape) * (layer.in_channels // layer.groups) * kh * kw
    if name == "Linear":
        return 2.0 * x_shape[0] * layer.in_features * layer.out_features
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_cifar", choices=R.NAMES)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: CPU time of the calling thread, robust on a loaded machine; "
                         "only meaningful with --threads 1 and OPENBLAS_NUM_THREADS=1")
    ap.add_argument("--blas-compare", action="store_true",
                    help="cnnkit alone, NumPy's GEMM against MKL's (the [mkl] extra), interleaved")
    args = ap.parse_args(argv)
    malloc = pin_malloc_thresholds()   # PyTorch in its fastest state (see malloc_state.py)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "thread" else time.perf_counter
    from cnnkit.nn import _parallel as F
    F.set_num_threads(args.threads)

    torch = None
    if args.blas_compare:
        from cnnkit.nn import _gemm
        try:
            _gemm.set_backend("mkl")
        except RuntimeError as e:
            print(f"--blas-compare needs MKL: {e}")
            return 1
    if not args.no_torch and not args.blas_compare:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            torch = None

    model = R.build_cnnkit(args.model)
    tmodel = R.build_torch(args.model, model) if torch is not None else None
    x, _ = R.batch(args.model, args.batch)
    peak = gemm_peak()
    print(f"# {args.model}, batch {args.batch}, np.matmul float32 GEMM peak {peak:.1f} GFLOP/s; {malloc}\n")
    rng = np.random.default_rng(1)
    rows, total = [], np.zeros(4)
    layers = list(model)
    acts = [x]
    for layer in layers:
        acts.append(layer(acts[-1]))
    grads = [None] * len(layers)
    g = rng.standard_normal(acts[-1].shape).astype(np.float32)
    for i in range(len(layers) - 1, -1, -1):
        grads[i] = g
        layers[i](acts[i])
        g = layers[i].backward(g)
    if args.blas_compare:
        print_blas_table(layers, acts, grads, args.repeats)
        return 0
    for i, layer in enumerate(layers):
        xin, gout = acts[i], grads[i]

        def fwd(layer=layer, xin=xin):
            layer(xin)

        def bwd(layer=layer, xin=xin, gout=gout):
            # Each forward on an array records the graph its one backward() consumes.
            layer(xin)
            layer.backward(gout)

        tf = median_time(fwd, args.repeats)
        # The backward: (forward with gradients + backward) - forward, as for PyTorch below.
        tb = max(median_time(bwd, args.repeats) - tf, 0.0)
        ttf = ttb = float("nan")
        if tmodel is not None:
            tl = tmodel[i]
            xt = torch.from_numpy(np.ascontiguousarray(xin)).requires_grad_(i > 0)
            gt = torch.from_numpy(np.ascontiguousarray(gout))
            with torch.no_grad():
                ttf = median_time(lambda: tl(xt), args.repeats)
            inputs = [p for p in tl.parameters()] + ([xt] if i > 0 else [])

            def tbwd(tl=tl, xt=xt, gt=gt, inputs=inputs):
                out = tl(xt)
                if inputs:
                    torch.autograd.grad(out, inputs, gt)

            # PyTorch's backward: (forward with autograd + backward) - forward without it.
            ttb = max(median_time(tbwd, args.repeats) - ttf, 0.0) if inputs else 0.0
        fl = layer_flops(layer, xin.shape, acts[i + 1].shape)
        bwd_mult = 2 if (i > 0 and fl) else 1
        gf_f = fl / tf / 1e9 if fl else None
        gf_b = bwd_mult * fl / tb / 1e9 if fl else None
        rows.append((f"{i}:{type(layer).__name__}", str(tuple(acts[i + 1].shape[1:])), tf, tb, ttf, ttb, gf_f, gf_b))
        total += [tf, tb, ttf, ttb]

    def ms(v):
        return "-" if v != v else f"{v * 1e3:.2f}"

    def gf(v):
        return "" if v is None else f"{v:.1f} ({100 * v / peak:.0f}%)"

    print("| layer | output | cnnkit fwd ms | cnnkit bwd ms | torch fwd ms | torch bwd ms | fwd GFLOP/s (% peak) | bwd GFLOP/s (% peak) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {ms(r[2])} | {ms(r[3])} | {ms(r[4])} | {ms(r[5])} | {gf(r[6])} | {gf(r[7])} |")
    print(f"| total | | {ms(total[0])} | {ms(total[1])} | {ms(total[2])} | {ms(total[3])} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
