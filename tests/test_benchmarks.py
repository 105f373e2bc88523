"""The benchmark scripts run end to end (tiny settings: this checks that they work and what
their table holds, not any speed; speed is never asserted in the test suite)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
TINY = ["--models", "lenet", "--batch-sizes", "4", "--rounds", "1", "--min-time", "0.01", "--pause", "0"]


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, os.path.join(BENCH, script), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pin_malloc_thresholds_reports_what_it_did():
    sys.path.insert(0, BENCH)
    try:
        from malloc_state import pin_malloc_thresholds
    finally:
        sys.path.remove(BENCH)
    # Run in a child: the thresholds are process-wide and this process runs other tests.
    code = f"import sys; sys.path.insert(0, {BENCH!r}); from malloc_state import pin_malloc_thresholds as p; print(p())"
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert callable(pin_malloc_thresholds)
    if platform.libc_ver()[0] == "glibc":
        assert "mmap threshold pinned at 32 MB, trim at 1024 MB" in said
    else:
        assert "malloc" in said


@pytest.mark.parametrize("malloc", ["pinned", "default"])
def test_bench_vs_torch_prints_a_row_per_mode(malloc):
    pytest.importorskip("torch")
    out = _run("bench_vs_torch.py", *TINY, "--malloc", malloc)
    header = out.splitlines()[0]
    assert "2 threads" in header and "cnnkit's GEMM" in header
    assert ("pinned" in header) == (malloc == "pinned")
    rows = [line for line in out.splitlines() if line.startswith("| lenet |")]
    assert [r.split("|")[3].strip() for r in rows] == ["train", "infer"]
    for row in rows:
        ours, theirs, ratio = (float(c.replace(",", "")) for c in row.split("|")[4:7])
        assert ours > 0 and theirs > 0
        # The ratio column is the quotient of the two unrounded rates, printed to 2 decimals;
        # the rates are printed as integers, each off by up to 0.5 img/s. So the quotient of
        # the printed rates lies within the interval those roundings allow, widened by the
        # ratio's own rounding (0.005).
        low = max(ours - 0.5, 0.0) / (theirs + 0.5)
        high = (ours + 0.5) / max(theirs - 0.5, 1e-9)
        assert low - 0.005 <= ratio <= high + 0.005


def test_bench_vs_torch_rejects_an_unknown_model():
    done = subprocess.run([sys.executable, os.path.join(BENCH, "bench_vs_torch.py"), "--models", "resnet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert re.search(r"--models: invalid choice: 'resnet'", done.stderr)
