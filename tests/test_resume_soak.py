"""Resume soak: a training run killed (SIGKILL, or Ctrl-C) at many random moments -- inside a
step, between the end-of-epoch checkpoint writes, between a write and its rename -- and
resumed each time ends bit for bit equal to the run that was never interrupted.

Default: CNNKIT_SOAK_KILLS=10 kills (well under a minute); more with e.g.
``CNNKIT_SOAK_KILLS=200 pytest tests/test_resume_soak.py``. The kill schedule comes from
CNNKIT_SOAK_SEED (default 0) and is printed, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnkit.io import load_checkpoint

HERE = Path(__file__).parent
KILLS = int(os.environ.get("CNNKIT_SOAK_KILLS", "10"))
SEED = int(os.environ.get("CNNKIT_SOAK_SEED", "0"))
# Checkpoint writes of a whole run: last every epoch, best when val_loss improved (<= 2 per epoch).
MAX_WRITES = 10
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")])}


def _life(folder: Path, plan: str = "none", signal_after: tuple[int, float] | None = None) -> int:
    proc = subprocess.Popen([sys.executable, str(HERE / "soak_child.py"), str(folder), plan], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if signal_after is not None:
        sig, delay = signal_after
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    # 130: Ctrl-C handled by fit (state saved); -SIGINT: Ctrl-C before fit started or after it ended
    assert proc.returncode in (0, 130, -signal.SIGKILL, -signal.SIGINT), err.decode()[-3000:]
    return proc.returncode


def _check_consistent(folder: Path) -> None:
    """What a kill may leave: last and best agree (best is never older than the best epoch last
    records), and every file on disk is a complete checkpoint."""
    last, best = folder / "last.safetensors", folder / "best.safetensors"
    if last.is_file():
        state = load_checkpoint(last).meta["train_state"]
        recorded = state["callbacks"][1]["state"]["best_epoch"]
        if recorded is not None:
            assert best.is_file() and load_checkpoint(best).meta["epoch"] >= recorded


def _final(folder: Path) -> dict:
    out = {}
    for name in ("last", "best"):
        ckpt = load_checkpoint(folder / f"{name}.safetensors")
        out[name] = ckpt
    return out


def _assert_same(a: dict, b: dict) -> None:
    for name in a:
        ca, cb = a[name], b[name]
        assert list(ca.state_dict) == list(cb.state_dict)
        for k in ca.state_dict:
            np.testing.assert_array_equal(ca.state_dict[k], cb.state_dict[k], err_msg=f"{name}: {k}")
        for i, slots in ca.optimizer_state["state"].items():
            for key, value in slots.items():
                np.testing.assert_array_equal(value, cb.optimizer_state["state"][i][key], err_msg=f"{name}: {key}")
        assert ca.scheduler_state == cb.scheduler_state
        ha, hb = ca.meta["train_state"]["history"], cb.meta["train_state"]["history"]
        assert ha["epochs"] == hb["epochs"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):  # time / img/s differ, of course
            assert ha["history"][key] == hb["history"][key], key
        assert ca.meta["epoch"] == cb.meta["epoch"]


def test_killed_and_resumed_runs_end_bit_for_bit_equal(tmp_path):
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    assert _life(reference) == 0
    duration = time.monotonic() - t0
    expected = _final(reference)

    rng = random.Random(SEED)
    soaked = tmp_path / "soaked"
    schedule = []
    for _ in range(KILLS):
        kind = rng.choice(["sigkill", "sigkill", "sigint", "write", "rename"])
        if kind in ("sigkill", "sigint"):
            sig = signal.SIGKILL if kind == "sigkill" else signal.SIGINT
            delay = rng.uniform(0.2, duration)
            schedule.append(f"{kind}@{delay:.2f}s")
            _life(soaked, signal_after=(sig, delay))
        else:
            k = rng.randint(1, MAX_WRITES)
            schedule.append(f"{kind}:{k}")
            _life(soaked, plan=f"{kind}:{k}")
        _check_consistent(soaked)
    assert _life(soaked) == 0, f"schedule (seed {SEED}): {schedule}"
    assert not list(soaked.glob(".*.tmp"))  # a later life cleans up the temporary file a kill left
    _assert_same(expected, _final(soaked))
    print(f"soak (seed {SEED}): {schedule}")
