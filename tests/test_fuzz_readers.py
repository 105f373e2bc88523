"""Fuzzing the file readers: the .pth reader, safetensors checkpoints and their metadata, IDX
files and the CIFAR-10 archive may only return a result or raise the library's own error
(TorchFileError, CheckpointError, DataFormatError), within a memory cap.

Each target runs in its own process (tests/fuzz_targets.py) for CNNKIT_FUZZ_SECONDS seconds
(default 3: CI-sized) under an address-space cap of CNNKIT_FUZZ_MEMORY_MIB (default 512) above
the interpreter's own, so that a size taken from a file on trust shows up as a MemoryError.
The inputs are a fixed sequence (CNNKIT_FUZZ_SEED, default 0): a green run stays green on the
same code. Explore afresh with e.g.
``CNNKIT_FUZZ_SEED=random CNNKIT_FUZZ_SECONDS=600 pytest tests/test_fuzz_readers.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

HERE = Path(__file__).parent
SECONDS = float(os.environ.get("CNNKIT_FUZZ_SECONDS", "3"))
MEMORY_MIB = int(os.environ.get("CNNKIT_FUZZ_MEMORY_MIB", "512"))
SEED = os.environ.get("CNNKIT_FUZZ_SEED", "0")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory cap uses /proc and RLIMIT_AS")
@pytest.mark.parametrize("target", ["pth", "safetensors", "metadata", "idx", "cifar"])
def test_reader_survives_fuzzing(target):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_targets.py"), target, str(SECONDS), str(MEMORY_MIB), SEED],
                          capture_output=True, text=True, env=env, timeout=SECONDS + 300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report from the fuzzer (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    failure = report.get("failure")
    assert failure is None and proc.returncode == 0, (
        f"{target} (seed {failure and failure.get('seed', 'random')}): {failure and failure['error']}\ninput ({failure and failure['input_size']} bytes, hex): "
        f"{failure and failure['input_hex'][:2000]}\n{failure and failure['traceback']}\n{proc.stderr[-2000:]}")
    assert report["examples"] > 0
