"""Hostile and corrupt files for the .pth reader, checkpoints and atomic writes: every size
is checked against the bytes behind it before anything is allocated, shared references are
converted once, tampered metadata is refused with one line naming the file and the field."""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from cnnkit.io import CheckpointError, TorchFileError, load, load_checkpoint, load_torch, read_torch, save
from cnnkit.io import atomic
from hardening_helpers import cnnkit_metadata, nested_lists_pickle, safetensors_bytes, tensor_pickle, zip_pth

MiB = 1 << 20


def _peak_bytes(fn):
    """Peak Python + NumPy allocation (both report to tracemalloc) while fn runs."""
    tracemalloc.start()
    try:
        try:
            fn()
        except (TorchFileError, CheckpointError):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------- .pth sizes
def test_zero_strides_do_not_expand_a_tiny_file(tmp_path):
    path = tmp_path / "zero_stride.pth"
    zip_pth(path, tensor_pickle(1, 0, (1 << 15, 1 << 15), (0, 0)), [("data/0", np.float32(7).tobytes())])
    assert path.stat().st_size < 1024
    out = {}
    peak = _peak_bytes(lambda: out.update(load_torch(path)))
    t = out["t"]
    assert t.shape == (1 << 15, 1 << 15) and t[123, 4567] == 7 and not t.flags.writeable
    assert peak < MiB  # the C-contiguous copy would be 4 GiB


def test_expanded_tensor_from_torch_reads_as_a_view(tmp_path):
    torch = pytest.importorskip("torch")
    src = torch.arange(3, dtype=torch.float32).expand(1000, 3)
    torch.save({"e": src}, tmp_path / "expanded.pth")
    e = load_torch(tmp_path / "expanded.pth")["e"]
    np.testing.assert_array_equal(e, src.numpy())
    assert e.strides == (0, 4)


def _patch_declared_size(path, member: str, size: int) -> None:
    """Rewrite the uncompressed-size fields of ``member`` (local header and central directory)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, field in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            name_at = i + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                data[i + field:i + field + 4] = struct.pack("<I", size)
            start = i + 4
    path.write_bytes(bytes(data))


def test_zip_member_declaring_more_than_its_bytes_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.pth"
    declared = 0xF000_0000  # 3.75 GiB
    zip_pth(path, tensor_pickle(declared // 4, 0, (declared // 4,), (1,)),
            [("data/0", bytes(64 * 1024))], compression=zipfile.ZIP_DEFLATED)
    _patch_declared_size(path, "archive/data/0", declared)
    with pytest.raises(TorchFileError, match=r"bomb\.pth: record archive/data/0 declares 40265318\d+ bytes"):
        load_torch(path)
    assert _peak_bytes(lambda: load_torch(path)) < 4 * MiB


def test_storage_size_is_compared_before_the_member_is_read(tmp_path):
    path = tmp_path / "wrong.pth"
    zip_pth(path, tensor_pickle(6, 0, (6,), (1,)), [("data/0", bytes(8 * MiB))], compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(TorchFileError, match=r"wrong\.pth: storage '0' should hold 6 elements \(24 bytes\), "
                                             r"found 8388608 bytes"):
        load_torch(path)
    assert _peak_bytes(lambda: load_torch(path)) < 2 * MiB  # 8 MiB were never decompressed


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x96"])  # BINBYTES8, BYTEARRAY8
def test_pickle_length_fields_are_checked_against_the_bytes_behind_them(tmp_path, opcode):
    path = tmp_path / "len.pth"
    zip_pth(path, b"\x80\x05" + opcode + struct.pack("<Q", 3 << 30) + b"abc.")
    peak = _peak_bytes(lambda: load_torch(path))
    with pytest.raises(TorchFileError, match=r"len\.pth: corrupt or truncated pickle data"):
        load_torch(path)
    assert peak < MiB  # the C unpickler alone would allocate the declared 3 GiB first


def test_legacy_file_lengths_are_checked_too(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x80\x05\x8e"
                     + struct.pack("<Q", 3 << 30) + b"abc.")
    with pytest.raises(TorchFileError, match=r"legacy\.pth: corrupt or truncated pickle data"):
        load_torch(path)


# ---------------------------------------------------------------------------- shared references
def test_shared_references_are_converted_once(tmp_path):
    node: list = []
    for _ in range(60):  # 2**60 paths through the structure, 60 distinct lists
        node = [node, node]
    path = tmp_path / "shared.pth"
    zip_pth(path, pickle.dumps({"x": node}, protocol=2))
    assert path.stat().st_size < 4096
    out = read_torch(path)["x"]
    depth = 0
    while out:
        assert out[0] is out[1]  # the sharing survives conversion
        out, depth = out[0], depth + 1
    assert depth == 60


def test_deep_nesting_is_refused_with_the_file_name(tmp_path):
    path = tmp_path / "deep.pth"
    zip_pth(path, nested_lists_pickle(100_000))
    with pytest.raises(TorchFileError, match=r"deep\.pth: containers nested more than 100 deep"):
        read_torch(path)


# ---------------------------------------------------------------------------- BUILD
_OD = b"ccollections\nOrderedDict\n)R"


@pytest.mark.parametrize("state", [
    b"}X\x05\x00\x00\x00itemsK\x01s",              # {"items": 1}: would shadow dict.items
    b"(N}X\x04\x00\x00\x00keysK\x01st",            # (None, {"keys": 1}): slot-state form
    b"K\x05",                                      # not a dict at all
])
def test_build_cannot_redirect_a_state_dict(tmp_path, state):
    path = tmp_path / "build.pth"
    zip_pth(path, b"\x80\x02" + _OD + state + b"b.")
    with pytest.raises(TorchFileError, match=r"build\.pth: .*BUILD of an OrderedDict"):
        load_torch(path)


def test_build_of_torch_metadata_is_accepted(tmp_path):
    torch = pytest.importorskip("torch")
    sd = torch.nn.Linear(2, 3).state_dict()
    assert hasattr(sd, "_metadata")  # torch pickles it through BUILD
    torch.save(sd, tmp_path / "real.pth")
    got = load_torch(tmp_path / "real.pth")
    np.testing.assert_array_equal(got["weight"], sd["weight"].numpy())


def test_build_on_a_plain_dict_is_refused_like_torch(tmp_path):
    path = tmp_path / "build_dict.pth"
    zip_pth(path, b"\x80\x02}}X\x01\x00\x00\x00aK\x01sb.")
    with pytest.raises(TorchFileError, match=r"build_dict\.pth"):
        load_torch(path)


# ---------------------------------------------------------------------------- folders as files
def test_a_folder_passed_as_a_file_is_named_as_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a folder, expected a file"):
        load_torch(tmp_path)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a folder, expected a file"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------- checkpoint metadata
def _ckpt(tmp_path, name="bad.safetensors", tensors=None, **fields):
    path = tmp_path / name
    tensors = {"model.w": np.zeros((4, 3), np.float32)} if tensors is None else tensors
    path.write_bytes(safetensors_bytes(tensors, cnnkit_metadata(**fields)))
    return path


@pytest.mark.parametrize("field, text, expected", [
    ("meta", "[1, 2]", r"'meta' must be an object, found a JSON array"),
    ("config", "5", r"'config' must be an object, found a JSON number"),
    ("config", '{"name": 3}', r"'config' must be \{\"name\": string"),
    ("config", '{"name": "lenet", "kwargs": [1]}', r"'config' must be"),
    ("model_keys", '"w"', r"'model_keys' must be a list of strings, found a JSON string"),
    ("optimizer", "[]", r"'optimizer' must be an object"),
    ("optimizer", '{"state": {}, "param_groups": 3}', r"malformed optimizer state"),
    ("scheduler", "true", r"'scheduler' must be an object, found a JSON boolean"),
    ("meta", "[" * 100_000 + "]" * 100_000, r"'meta' is nested too deeply"),
    ("meta", '{"epoch": -3}', r"meta\['epoch'\] must be an integer >= 0, found -3"),
    ("meta", '{"classes": "abc"}', r"meta\['classes'\] must be a list of 1 to \d+ strings"),
    ("meta", '{"input_shape": [3, 100000, 100000]}', r"meta\['input_shape'\] \[3, 100000, 100000\] is too large"),
    ("meta", '{"input_shape": [1, 0, 28]}', r"must have positive sizes"),
    ("meta", '{"normalize": {"mean": [0.5], "std": [0]}}', r"meta\['normalize.std'\] must be positive"),
    ("meta", '{"normalize": {"mean": [NaN], "std": [1]}}', r"meta\['normalize.mean'\] must be a non-empty list "
                                                           r"of finite numbers"),
])
def test_metadata_of_the_wrong_type_is_one_line_naming_file_and_field(tmp_path, field, text, expected):
    path = _ckpt(tmp_path, **{field: text})
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors.*{expected}") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_header_nested_too_deeply(tmp_path):
    text = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(CheckpointError, match=r"deep\.safetensors.*nested too deeply"):
        load_checkpoint(path)


def test_architecture_config_cannot_ask_for_more_than_the_weights_hold(tmp_path):
    from cnnkit import models

    real = tmp_path / "real.safetensors"
    save(models.create("lenet"), real)
    ckpt = load_checkpoint(real)
    config = json.dumps({"name": "lenet", "kwargs": {"num_classes": 10 ** 9}})
    path = _ckpt(tmp_path, tensors={f"model.{k}": v for k, v in ckpt.state_dict.items()}, config=config,
                 model_keys=json.dumps(list(ckpt.state_dict)))
    peak = _peak_bytes(lambda: load(path))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: the architecture config asks for "
                                              r"num_classes=1000000000, larger than any dimension"):
        load(path)
    assert peak < 16 * MiB  # Linear(84, 10**9) would be 336 GB


def test_architecture_config_with_unknown_arguments_is_one_line(tmp_path):
    config = json.dumps({"name": "lenet", "kwargs": {"colour": 3}})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: cannot rebuild the model from its config"):
        load(_ckpt(tmp_path, config=config))


# ---------------------------------------------------------------------------- atomic writes
def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError, match=rf"cannot write {target}: No space left on device") as info:
        atomic.atomic_write_bytes(target, b"x")
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_stale_temporary_files_are_removed(tmp_path):
    stale = tmp_path / ".last.safetensors.0123456789ab.tmp"
    stale.write_bytes(b"half")
    keep = [tmp_path / ".notes.tmp", tmp_path / "last.safetensors", tmp_path / ".x.0123456789ab.tmp.bak"]
    for k in keep:
        k.write_bytes(b"mine")
    assert atomic.remove_stale_temps(tmp_path) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted(k.name for k in keep)


def test_zip_with_an_undecodable_member_name_is_a_torch_file_error(tmp_path):
    path = tmp_path / "names.pth"
    zip_pth(path, pickle.dumps({"a": 1}, protocol=2))
    data = bytearray(path.read_bytes())
    i = data.find(b"PK\x01\x02")  # first central-directory entry: flag bit 11 = UTF-8 names
    data[i + 8:i + 10] = struct.pack("<H", struct.unpack("<H", data[i + 8:i + 10])[0] | 0x800)
    data[i + 46] = 0x80  # not valid UTF-8
    path.write_bytes(bytes(data))
    with pytest.raises(TorchFileError, match=r"names\.pth: truncated or unreadable archive \(UnicodeDecodeError"):
        load_torch(path)
