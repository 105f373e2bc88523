"""The fuzzing harness behind tests/test_fuzz_readers.py (not a test module).

Run as ``python fuzz_targets.py TARGET SECONDS MEMORY_MIB [SEED]``: feeds hypothesis-generated
inputs to one reader for SECONDS seconds under an address-space cap of MEMORY_MIB above
what the process already uses (``resource.setrlimit(RLIMIT_AS)``), so an allocation driven
by a size in the input fails as MemoryError instead of exhausting the machine. The only
allowed outcomes of a reader are a result or the library's own error type; anything else
(MemoryError included) is printed as one JSON line ``{"failure": ...}`` with the input, and
the exit code is 1. Success prints ``{"examples": N}``.

SEED (default 0) makes the inputs a fixed sequence: round i of 50 examples uses hypothesis's
seed SEED + i, so a run that finds nothing today finds nothing tomorrow on the same code
(a CI run must not fail at random), and a finding names the round that reproduces it.
``random`` explores afresh each run (for long runs by hand).

Inputs are valid files mutated at two levels: the raw bytes (flips, cuts, insertions,
splices), and the inner structure (the pickle inside a .pth zip, the JSON header of a
safetensors file, the tar inside the CIFAR-10 archive, the metadata of a checkpoint), so the
fuzzer gets past checksums and framing into the parsers.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import resource
import struct
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cnnkit.data import CIFAR10, DataFormatError, read_idx, write_idx
from cnnkit.io import CheckpointError, TorchFileError, load, load_checkpoint, read_torch, save, save_torch

# ---------------------------------------------------------------------------- mutations
@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` with a few random edits (or, sometimes, random bytes)."""
    if draw(st.integers(0, 15)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup", "int"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "cut":
            end = draw(st.integers(pos, len(data)))
            del data[pos:end]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "dup":
            end = draw(st.integers(pos, min(len(data), pos + 64)))
            data[pos:pos] = data[pos:end] * draw(st.integers(1, 8))
        elif kind == "int" and len(data) >= pos + 4:  # an extreme little- or big-endian length
            value = draw(st.sampled_from([0, 1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 31, 0x7FFFFFFF, 4 * 10 ** 9 % 2 ** 32]))
            data[pos:pos + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
    return bytes(data)


def _json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)


# ---------------------------------------------------------------------------- seeds
def _state_dict():
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.normal(size=(2, 1, 3, 3)).astype(np.float32),
            "conv.bias": np.zeros(2, np.float32), "bn.num_batches_tracked": np.array(3, np.int64),
            "fc.weight": rng.normal(size=(3, 4)).astype(np.float64)}


def _pth_seed(folder: str) -> tuple[bytes, bytes]:
    path = os.path.join(folder, "seed.pth")
    save_torch(_state_dict(), path)
    data = open(path, "rb").read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = zf.read("archive/data.pkl")
    return data, pkl


def _rezip(seed: bytes, pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(seed)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pkl if info.filename.endswith("data.pkl") else src.read(info))
    return out.getvalue()


def _legacy(pkl_object: bytes) -> bytes:
    return b"".join([pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
                     pickle.dumps({"little_endian": True}, protocol=2), pkl_object, pickle.dumps([], protocol=2)])


def _safetensors_seed(folder: str) -> bytes:
    from cnnkit import models, optim

    model = models.create("lenet", num_classes=3)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    opt.step()
    path = os.path.join(folder, "seed.safetensors")
    save(model, path, optimizer=opt, meta={"epoch": 1, "classes": ["a", "b", "c"], "input_shape": [1, 28, 28],
                                            "normalize": {"mean": [0.5], "std": [0.25]}})
    return open(path, "rb").read()


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _pack_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _cifar_tar(per_batch: int = 2) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name in ("test_batch.bin", "batches.meta.txt"):
            blob = (rng.integers(0, 256, (per_batch, 3073), dtype=np.uint8) % [10] + [[0] + [1] * 3072]
                    ).astype(np.uint8).tobytes() if name.endswith(".bin") else b"\n".join(
                b"c%d" % i for i in range(10))
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return out.getvalue()


# ---------------------------------------------------------------------------- targets
def _file_reader(path: str, *readers):
    """A target's run function: write the input to ``path``, call every reader on it."""
    def run(data: bytes):
        with open(path, "wb") as f:
            f.write(data)
        for read in readers:
            read(path)
    return run


def target_pth(folder: str):
    seed, pkl = _pth_seed(folder)
    legacy = _legacy(pickle.dumps({"w": [1, 2.0, "x", (None, True)]}, protocol=2))
    path = os.path.join(folder, "x.pth")

    @st.composite
    def inputs(draw):
        kind = draw(st.sampled_from(["raw", "pickle", "legacy"]))
        if kind == "raw":
            return draw(mutated(seed))
        if kind == "pickle":
            return _rezip(seed, draw(mutated(pkl)))
        return draw(mutated(legacy))

    return inputs(), _file_reader(path, read_torch), (TorchFileError,)


def target_safetensors(folder: str):
    seed = _safetensors_seed(folder)
    header, body = _split_safetensors(seed)
    path = os.path.join(folder, "x.safetensors")

    @st.composite
    def inputs(draw):
        kind = draw(st.sampled_from(["raw", "header"]))
        if kind == "raw":
            return draw(mutated(seed))
        text = json.dumps(header).encode()
        new = draw(mutated(text))
        return struct.pack("<Q", len(new)) + new + body

    return inputs(), _file_reader(path, load_checkpoint), (CheckpointError,)


def target_metadata(folder: str):
    seed = _safetensors_seed(folder)
    header, body = _split_safetensors(seed)
    path = os.path.join(folder, "m.safetensors")
    fields = ["meta", "config", "optimizer", "scheduler", "model_keys"]

    @st.composite
    def inputs(draw):
        meta = dict(header["__metadata__"])
        for key in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
            current = json.loads(meta[key]) if key in meta else None
            if isinstance(current, dict) and current and draw(st.booleans()):
                inner = draw(st.sampled_from(sorted(current)))  # replace one field of the object
                current[inner] = draw(_json_values())
                value = current
            elif key == "config" and draw(st.booleans()):
                value = {"name": draw(st.sampled_from(["lenet", "fashion_cnn", "resnet18", "nope"])),
                         "kwargs": draw(st.dictionaries(st.sampled_from(
                             ["num_classes", "in_channels", "input_size", "dropout", "layers", "x"]),
                             _json_values(), max_size=3))}
            else:
                value = draw(_json_values())
            meta[key] = json.dumps(value)
        return _pack_safetensors({**header, "__metadata__": meta}, body)

    return inputs(), _file_reader(path, load_checkpoint, load), (CheckpointError,)


def target_idx(folder: str):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw_path = os.path.join(folder, "seed.idx")
    write_idx(raw_path, arr)
    seed = open(raw_path, "rb").read()
    paths = {False: os.path.join(folder, "x.idx"), True: os.path.join(folder, "x.idx.gz")}

    @st.composite
    def inputs(draw):
        data = draw(mutated(seed))
        compress = draw(st.booleans())
        return (gzip.compress(data, mtime=0) if compress else data), compress

    def run(item):
        data, compress = item
        if compress and len(data) > 20 and data[-1] % 3 == 0:
            data = data[:-(data[-1] % 17)]  # a cut gzip stream too
        with open(paths[compress], "wb") as f:
            f.write(data)
        read_idx(paths[compress], kind=None)

    return inputs(), run, (DataFormatError,)


def target_cifar(folder: str):
    tar = _cifar_tar()
    root = os.path.join(folder, "cifar")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "cifar-10-binary.tar.gz")

    @st.composite
    def inputs(draw):
        if draw(st.integers(0, 3)) == 0:
            return draw(mutated(gzip.compress(tar, mtime=0)))
        return gzip.compress(draw(mutated(tar)), mtime=0)

    return inputs(), _file_reader(path, lambda _: CIFAR10(root=root, train=False, download=False)), \
        (DataFormatError,)


TARGETS = {"pth": target_pth, "safetensors": target_safetensors, "metadata": target_metadata,
           "idx": target_idx, "cifar": target_cifar}


# ---------------------------------------------------------------------------- driver
def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def main(name: str, seconds: float, memory_mib: int, seed_base: str = "0") -> int:
    folder = tempfile.mkdtemp(prefix=f"cnnkit-fuzz-{name}-")
    strategy, run, allowed = TARGETS[name](folder)
    cap = _address_space() + memory_mib * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    deadline = time.monotonic() + seconds
    count = 0
    failure: dict = {}
    fixed = seed_base != "random"

    @settings(max_examples=50, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(strategy)
    def check(item):
        nonlocal count
        count += 1
        try:
            run(item)
        except allowed:
            pass
        except BaseException as exc:  # noqa: BLE001 -- anything else is the finding
            data = item[0] if isinstance(item, tuple) else item
            failure.update(error=f"{type(exc).__name__}: {exc}"[:500], input_hex=data[:4096].hex(),
                           input_size=len(data), traceback=traceback.format_exc()[-2000:])
            raise

    rounds = 0
    while time.monotonic() < deadline:
        run_round = seed(int(seed_base) + rounds)(check) if fixed else check
        try:
            run_round()
        except Exception:  # the failure is recorded above (hypothesis re-raises the minimal one)
            if fixed:
                failure["seed"] = int(seed_base) + rounds
            print(json.dumps({"failure": failure, "target": name, "examples": count}))
            return 1
        rounds += 1
    print(json.dumps({"examples": count, "target": name, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5]))
