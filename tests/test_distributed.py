"""Data-parallel training over MPI (cnnkit.distributed).

The MPI tests start ``mpiexec`` as a subprocess running tests/_mpi_fit_script.py; they run when
mpi4py and an ``mpiexec`` are installed (``pip install -e '.[mpi]'``) and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnkit.data import ArrayDataset, DataLoader
from cnnkit.distributed.comm import launched_world_size, library_name
from cnnkit.distributed.data_parallel import rank_stream
from cnnkit.distributed.sampler import ShardedLoader, shard_bounds

SCRIPT = Path(__file__).with_name("_mpi_fit_script.py")
TIMEOUT = 600  # a hang (a rank left waiting in an allreduce) fails the test instead of blocking CI


# ---------------------------------------------------------------------------- without MPI
@pytest.mark.parametrize("n,world", [(10, 4), (128, 2), (7, 7), (5, 3), (113, 8)])
def test_shard_bounds_cover_the_batch_in_order(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_sharded_loader_yields_the_global_batches_split_over_ranks():
    x = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    y = np.arange(23)
    whole = DataLoader(ArrayDataset(x, y), batch_size=6, shuffle=True, seed=5)
    expected = list(whole)  # 6, 6, 6, 5
    world = 4
    shards = [list(ShardedLoader(DataLoader(ArrayDataset(x, y), batch_size=6, shuffle=True, seed=5), r, world))
              for r in range(world)]
    assert len(ShardedLoader(whole, 0, world)) == len(expected)
    for k, (bx, by) in enumerate(expected):
        np.testing.assert_array_equal(np.concatenate([shards[r][k][1] for r in range(world)]), by)
        np.testing.assert_array_equal(np.concatenate([shards[r][k][0] for r in range(world)]), bx)


def test_sharded_loader_drops_only_a_last_batch_smaller_than_the_world():
    x, y = np.zeros((14, 3), np.float32), np.arange(14)
    loader = DataLoader(ArrayDataset(x, y), batch_size=6)  # 6, 6, 2
    sharded = ShardedLoader(loader, 1, 3)
    assert len(sharded) == 2
    assert [len(b[1]) for b in sharded] == [2, 2]
    with pytest.raises(ValueError, match="batch size"):
        ShardedLoader(DataLoader(ArrayDataset(x, y), batch_size=2), 0, 3)


def test_rank_streams_differ_per_rank_and_are_reproducible():
    state = np.random.default_rng(0).bit_generator.state
    assert rank_stream(state, 0) == state
    one, two = rank_stream(state, 1), rank_stream(state, 2)
    assert one == rank_stream(state, 1) and one != two and one != state


def test_library_names():
    assert library_name("MPICH Version:      5.0.2\nMPICH Release date: ...") == "MPICH 5.0.2"
    assert library_name("Open MPI v4.1.5, package: Debian OpenMPI, ident: 4.1.5") == "Open MPI v4.1.5"


def test_world_size_from_the_launchers_environment(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "CNNKIT_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert launched_world_size() == 4
    monkeypatch.setenv("CNNKIT_DISTRIBUTED", "0")
    assert launched_world_size() == 1


# ---------------------------------------------------------------------------- under mpiexec
def _mpiexec() -> list[str] | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    exe = Path(sys.executable).with_name("mpiexec")
    found = str(exe) if exe.is_file() else shutil.which("mpiexec")
    if found is None:
        return None
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60).stdout
    cmd = [found]
    if "Open MPI" in version or "OpenRTE" in version:  # more ranks than cores; CI runs as root
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpi4py / mpiexec not installed (pip install -e '.[mpi]')")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["CNNKIT_NUM_THREADS"] = "1"
    return env


def _train(tmp_path, name: str, ranks: int, **args) -> list[dict]:
    """Run the script on ``ranks`` ranks (1: a plain process); returns each rank's record."""
    out = tmp_path / name
    spec = {"out": str(out), "kind": "plain", "epochs": 2, "samples": 46, "batch": 10, **args}
    cmd = [sys.executable, str(SCRIPT), json.dumps(spec)]
    if ranks > 1:
        cmd = MPIEXEC + ["-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [{"weights": np.load(f"{out}.rank{r}.npy"), **json.loads(Path(f"{out}.rank{r}.json").read_text())}
            for r in range(ranks)]


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_ranks_agree_and_match_one_process_on_the_same_global_batches(tmp_path, ranks):
    # Batches of 10 over 46 samples: shards 5/5 on 2 ranks, 3/3/2/2 on 4, last batch 6 -> 2/2/1/1.
    single = _train(tmp_path, "single", 1)[0]
    runs = _train(tmp_path, f"n{ranks}", ranks)
    steps = single["weights"]
    assert steps.shape[0] == 10  # 5 steps x 2 epochs
    for r in range(1, ranks):  # every rank runs the same reduced gradient through the same code
        np.testing.assert_array_equal(runs[r]["weights"], runs[0]["weights"])
    # One process and N ranks differ only in how the batch's per-sample gradients are summed
    # (split into shards, weighted, then added): float32 reordering of <= 10 terms, a relative
    # error <= 10 * 2^-24 ~ 6e-7 of gradients of size <~ 1. Ten SGD steps (lr 0.1, momentum 0.9)
    # carry a gradient error into the weights with a factor <= lr * steps / (1 - momentum) = 10:
    # <~ 6e-6. A shard weighted wrongly or a rank's gradient missing moves weights by >~ 1e-3.
    np.testing.assert_allclose(runs[0]["weights"], steps, rtol=0, atol=1e-5)
    # Metrics reduced over ranks: the same epoch losses and accuracies as one process.
    np.testing.assert_allclose(runs[0]["logs"]["loss"], single["logs"]["loss"], rtol=1e-5)
    # Accuracies are counts: equal unless a rounding-level weight difference flips a near-tie
    # argmax, so allow one sample per epoch (1/46 of the training set, 1/21 of validation).
    np.testing.assert_allclose(runs[0]["logs"]["accuracy"], single["logs"]["accuracy"], rtol=0, atol=1.01 / 46)
    np.testing.assert_allclose(runs[0]["logs"]["val_accuracy"], single["logs"]["val_accuracy"], rtol=0,
                               atol=1.01 / 21)
    assert all(run["logs"] == runs[0]["logs"] for run in runs)


@needs_mpi
def test_batchnorm_and_dropout_keep_every_rank_identical(tmp_path):
    runs = _train(tmp_path, "bn", 2, kind="bn")
    # Weights and running statistics (rank 0's, broadcast) are the same bits on both ranks
    # after every step, although each rank normalised and dropped out on its own shard.
    np.testing.assert_array_equal(runs[1]["weights"], runs[0]["weights"])
    assert np.isfinite(runs[0]["weights"]).all()


@needs_mpi
def test_ctrl_c_on_one_rank_stops_all_and_the_run_resumes_exactly(tmp_path):
    full = _train(tmp_path, "full", 2, kind="bn")
    ckpt = str(tmp_path / "last.safetensors")
    # The flag is raised on rank 1 only after step 3; every rank must stop after step 4.
    stopped = _train(tmp_path, "stopped", 2, kind="bn", stop_at=[3, 1], checkpoint=ckpt)
    assert [run["status"] for run in stopped] == ["interrupted", "interrupted"]
    assert [len(run["weights"]) for run in stopped] == [4, 4]
    np.testing.assert_array_equal(stopped[0]["weights"], full[0]["weights"][:4])
    resumed = _train(tmp_path, "resumed", 2, kind="bn", resume=ckpt)
    # The resumed run (every rank's generator restored: Dropout) ends with the same bits.
    np.testing.assert_array_equal(resumed[0]["weights"][-1], full[0]["weights"][-1])
    np.testing.assert_array_equal(resumed[1]["weights"][-1], full[1]["weights"][-1])
    assert resumed[0]["logs"] == full[0]["logs"]


@needs_mpi
def test_an_error_on_one_rank_ends_the_whole_job(tmp_path):
    spec = {"out": str(tmp_path / "fail"), "kind": "plain", "epochs": 2, "samples": 46, "batch": 10,
            "fail_at": [2, 1]}
    proc = subprocess.run(MPIEXEC + ["-n", "2", sys.executable, str(SCRIPT), json.dumps(spec)], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "error on rank 1 of 2: RuntimeError: injected failure" in proc.stderr


@needs_mpi
def test_cli_run_on_two_ranks_writes_checkpoints_one_process_loads(tmp_path):
    from cnnkit.io.checkpoint import load

    out = tmp_path / "run"
    cmd = MPIEXEC + ["-n", "2", sys.executable, "-m", "cnnkit.cli", "train", "--model", "lenet", "--dataset",
                     "fashion-mnist", "--out", str(out), "--limit-train", "400", "--limit-test", "100",
                     "--epochs", "1"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode == 2 and "not found" in proc.stderr:
        pytest.skip("Fashion-MNIST is not installed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone prints
    assert "world size 2" in proc.stdout
    model = load(out / "best.safetensors")
    metrics = json.loads((out / "metrics.json").read_text())
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert model(x).shape == (2, 10) and metrics["epochs_trained"] == 1
