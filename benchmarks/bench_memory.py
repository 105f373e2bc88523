"""Peak memory added by training steps, cnnkit vs PyTorch, each run in its own process.

    python benchmarks/bench_memory.py                 # all models, batch 256
    python benchmarks/bench_memory.py --models vgg_cifar --batch 256

Method (the same for both libraries, so the comparison is fair): a fresh child process
builds the model, optimizer (SGD, momentum 0.9) and batch, then resets the kernel's
peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and reads the resident
set size. It then runs training steps and reads the peak (``VmHWM``). The difference is
the memory the steps add: activations kept for backward, gradients, optimizer state,
scratch buffers, and whatever the allocator keeps. Two numbers per run:

- first step: from a model that never trained (includes one-time allocations such as
  gradients, momentum buffers and cnnkit's reusable scratch memory);
- four steps: the peak over four steps (the allocators then reuse what they hold, so
  this stays close to the first number unless something grows or leaks).

RSS counts every allocator (NumPy's, PyTorch's, the C library's), which tracemalloc would
not (it sees NumPy's arrays only). Where clear_refs is unavailable, ru_maxrss is used
(then the baseline may include the import's own peak).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    try:
        return _status_kb("VmHWM")
    except (OSError, KeyError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _load_compiled_kernels() -> None:
    """Load the optional Numba kernels before the baseline, as torch's libraries are loaded
    by its import: each is called once on tiny float32 arrays of the layouts the networks
    use. Why: Numba loads (or, in the first process ever, compiles) a kernel on its first
    call, and that costs the process ~60 MB once (LLVM's code generator), which would
    otherwise land in the first step's peak. The README reports that one-time cost apart."""
    import numpy as np
    from cnnkit.nn import _jit_conv, _jit_epilogue, _jit_pool, _jit_winograd
    f32 = np.zeros((1, 2, 2, 1), np.float32)
    idx = np.zeros((1, 1, 1, 1), np.uint8)
    _jit_pool.max_pool_2x2_index(f32, f32[:, :1, :1], idx, 0)
    _jit_pool.max_pool_2x2(f32, f32[:, :1, :1].copy())
    _jit_pool.max_pool_2x2_scatter(f32[:, :1, :1].copy(), idx, f32)
    _jit_pool.avg_pool_2x2(f32, f32[:, :1, :1].copy(), np.float32(0.25))
    _jit_pool.avg_pool_2x2_scatter(f32[:, :1, :1].copy(), np.float32(0.25), f32)
    _jit_conv.add_row_taps(np.zeros((1, 1, 1, 1, 1), np.float32), f32, 0, 0, 1, 1)
    _jit_conv.row_columns(f32, np.zeros((1, 2, 2, 1, 1), np.float32), 0, 0, 1, 1)
    cols = np.zeros((1, 1, 1, 1, 1, 1), np.float32)
    _jit_conv.columns(f32, cols, 0, 0, 1, 1, 1, 1)
    _jit_conv.add_taps(cols, f32, 0, 0, 1, 1, 1, 1)
    _jit_epilogue.bias_clip(f32.reshape(-1, 1), np.zeros(1, np.float32), True, True, False, np.inf)
    _jit_epilogue.multiply_by_positive(f32.reshape(-1), f32.reshape(-1))
    v = np.zeros((16, 1, 1), np.float32)
    perm = np.arange(16)
    _jit_winograd.input_tiles(f32, 0, 0, 1, 1, perm, v)
    _jit_winograd.output_tiles(v, np.zeros(1, np.float32), True, np.inf, perm, f32, 1, 1)


def child(lib: str, name: str, n: int, threads: int) -> dict:
    import bench_vs_torch as B
    if lib == "cnnkit":
        from cnnkit.nn import _jit
        from cnnkit.nn import _parallel as F
        F.set_num_threads(threads)
        if _jit.enabled():
            _load_compiled_kernels()
        _, step = B.cnnkit_steps(name, n, "train")
    else:
        import torch
        torch.set_num_threads(threads)
        from cnnkit.random import manual_seed
        manual_seed(0)
        import reference_models as R
        model = R.build_cnnkit(name)   # only for identical initial weights
        step = B.torch_steps(name, n, "train", model)
        del model
    gc.collect()
    exact = _reset_peak()
    base = _status_kb("VmRSS")
    step()
    first = _peak_kb() - base
    for _ in range(3):
        step()
    total = _peak_kb() - base
    return {"first_mb": first / 1024, "four_steps_mb": total / 1024, "exact": exact}


def main(argv=None) -> int:
    import reference_models as R
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=R.NAMES, choices=R.NAMES)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("LIB", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.batch, args.threads)))
        return 0
    print(f"# peak memory added by training steps, batch {args.batch} (MB, RSS high-water mark)\n")
    print("| model | cnnkit first step | PyTorch first step | ratio | cnnkit 4 steps | PyTorch 4 steps | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        res = {}
        for lib in ("cnnkit", "torch"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--batch", str(args.batch),
                                  "--threads", str(args.threads), "--child", lib, name],
                                 capture_output=True, text=True, check=True)
            res[lib] = json.loads(out.stdout.strip().splitlines()[-1])
        c, t = res["cnnkit"], res["torch"]
        print(f"| {name} | {c['first_mb']:.0f} | {t['first_mb']:.0f} | {c['first_mb'] / t['first_mb']:.2f} "
              f"| {c['four_steps_mb']:.0f} | {t['four_steps_mb']:.0f} | {c['four_steps_mb'] / t['four_steps_mb']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
