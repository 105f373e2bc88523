"""cnnkit.save / cnnkit.load / load_checkpoint: safetensors checkpoints."""

import json
import os
import struct
from collections import OrderedDict

import numpy as np
import pytest

import cnnkit
from cnnkit.io import CheckpointError, load, load_checkpoint, save
from cnnkit.io import atomic
from cnnkit.nn import Module, Parameter


class Leaf(Module):
    def __init__(self, rng):
        super().__init__()
        self.weight = Parameter(rng.standard_normal((3, 4)).astype(np.float32))
        self.register_buffer("running_mean", rng.standard_normal(3).astype(np.float32))
        self.register_buffer("num_batches_tracked", np.array(int(rng.integers(1, 1000)), dtype=np.int64))


class TinyNet(Module):
    """A parameter, an int64 buffer and a nested child: what a real model's state_dict holds."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.scale = Parameter(rng.standard_normal(2).astype(np.float32))
        self.body = Leaf(rng)
        self.head = Leaf(rng)


def _assert_same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def test_round_trip_into_given_model(tmp_path):
    src, dst = TinyNet(seed=1), TinyNet(seed=2)
    path = tmp_path / "ckpt.safetensors"
    save(src, path, meta={"epoch": 3, "classes": ["a", "b"]})
    out = load(path, model=dst)
    assert out is dst
    _assert_same_state(dst.state_dict(), src.state_dict())
    assert dst.body.num_batches_tracked.dtype == np.int64
    assert dst.checkpoint_meta == {"epoch": 3, "classes": ["a", "b"]}
    assert cnnkit.save is save and cnnkit.load is load


def test_load_checkpoint_fields(tmp_path):
    net = TinyNet()
    path = tmp_path / "c.safetensors"
    save(net, path)
    ckpt = load_checkpoint(path)
    _assert_same_state(ckpt.state_dict, net.state_dict())  # same keys, same order, same dtypes
    assert ckpt.state_dict["body.num_batches_tracked"].dtype == np.int64
    assert ckpt.config is None and ckpt.optimizer_state is None and ckpt.scheduler_state is None
    assert ckpt.meta == {} and ckpt.extra == {} and ckpt.cnnkit_version == cnnkit.__version__
    ckpt.state_dict["scale"][0] = 5.0  # arrays are ordinary writable arrays


def test_float64_model_round_trip(tmp_path):
    net = TinyNet().double()
    save(net, tmp_path / "d.safetensors")
    sd = load_checkpoint(tmp_path / "d.safetensors").state_dict
    assert sd["scale"].dtype == np.float64 and sd["body.num_batches_tracked"].dtype == np.int64
    _assert_same_state(sd, net.state_dict())


def test_state_dict_with_non_contiguous_arrays(tmp_path):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    sd = OrderedDict(t=base.T, s=base[:, 1:3], z=np.array(2.5))
    save(sd, tmp_path / "sd.safetensors")
    back = load_checkpoint(tmp_path / "sd.safetensors").state_dict
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key])
        assert back[key].dtype == sd[key].dtype


def test_meta_rng_state_and_numpy_scalars(tmp_path):
    cnnkit.manual_seed(123)
    rng_state = cnnkit.random.get_rng_state()  # holds 128-bit integers
    meta = {"epoch": np.int64(4), "best": np.float32(0.5), "rng": rng_state,
            "history": {"loss": [np.float64(1.25), 0.75]}, "shape": np.array([1, 28, 28])}
    save(TinyNet(), tmp_path / "m.safetensors", meta=meta)
    got = load_checkpoint(tmp_path / "m.safetensors").meta
    assert got == {"epoch": 4, "best": 0.5, "rng": rng_state, "history": {"loss": [1.25, 0.75]},
                   "shape": [1, 28, 28]}
    cnnkit.random.set_rng_state(got["rng"])
    assert cnnkit.random.get_rng_state() == rng_state


def test_non_json_meta_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="meta must be JSON-serialisable.*object"):
        save(TinyNet(), tmp_path / "x.safetensors", meta={"bad": object()})
    assert not any(tmp_path.iterdir())


def _fake_optimizer_state(rng):
    return {
        "state": {
            0: {"step": 3, "exp_avg": rng.standard_normal(2).astype(np.float32),
                "exp_avg_sq": rng.random(2).astype(np.float32)},
            1: {"step": 3, "momentum_buffer": None},
            2: {},
        },
        "param_groups": [{"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                          "params": [0, 1, 2]}],
    }


def test_optimizer_and_scheduler_state_round_trip(tmp_path):
    opt_state = _fake_optimizer_state(np.random.default_rng(0))
    sched_state = {"last_epoch": 5, "base_lrs": [0.1], "_last_lr": [0.05], "gamma": 0.5}
    save(TinyNet(), tmp_path / "o.safetensors", optimizer=opt_state, scheduler=sched_state)
    ckpt = load_checkpoint(tmp_path / "o.safetensors")
    got = ckpt.optimizer_state
    assert got["param_groups"] == opt_state["param_groups"]
    assert list(got["state"]) == [0, 1, 2]
    assert got["state"][1] == {"step": 3, "momentum_buffer": None} and got["state"][2] == {}
    assert got["state"][0]["step"] == 3
    for name in ("exp_avg", "exp_avg_sq"):
        assert got["state"][0][name].dtype == np.float32
        assert got["state"][0][name].tobytes() == opt_state["state"][0][name].tobytes()
    assert ckpt.scheduler_state == sched_state


def test_real_optimizer_resumes_identically(tmp_path):
    from cnnkit import optim
    net = TinyNet()
    opt = optim.Adam(net.parameters(), lr=0.01)
    for p in net.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    save(net, tmp_path / "r.safetensors", optimizer=opt)

    net2 = load(tmp_path / "r.safetensors", model=TinyNet(seed=9))
    opt2 = optim.Adam(net2.parameters(), lr=0.5)
    opt2.load_state_dict(load_checkpoint(tmp_path / "r.safetensors").optimizer_state)
    for model, o in ((net, opt), (net2, opt2)):
        for p in model.parameters():
            p.grad = np.full_like(p.data, 0.5)
        o.step()
    _assert_same_state(net2.state_dict(), net.state_dict())


def test_extra_arrays_round_trip(tmp_path):
    ema = {"scale": np.ones(2, np.float32), "step": np.array(9, np.int64)}
    save(TinyNet(), tmp_path / "e.safetensors", extra=ema)
    got = load_checkpoint(tmp_path / "e.safetensors").extra
    assert set(got) == set(ema) and got["step"].dtype == np.int64
    with pytest.raises(TypeError, match=r"extra\['x'\] must be a NumPy array"):
        save(TinyNet(), tmp_path / "e.safetensors", extra={"x": 1.0})


# ---------------------------------------------------------------------------- rebuilding
class _FakeZoo:
    def __init__(self):
        self.calls = []

    def create(self, name, **kwargs):
        self.calls.append((name, kwargs))
        model = TinyNet(seed=kwargs["seed"])
        model.config = {"name": name, "kwargs": kwargs}
        return model


def test_load_rebuilds_from_config(tmp_path, monkeypatch):
    zoo = _FakeZoo()
    monkeypatch.setattr(cnnkit.models, "create", zoo.create)
    src = zoo.create("tiny", seed=4)
    save(src, tmp_path / "z.safetensors", meta={"input_shape": [1, 2, 2]})
    assert load_checkpoint(tmp_path / "z.safetensors").config == {"name": "tiny", "kwargs": {"seed": 4}}
    out = load(tmp_path / "z.safetensors")
    assert zoo.calls[-1] == ("tiny", {"seed": 4})
    _assert_same_state(out.state_dict(), src.state_dict())
    assert out.checkpoint_meta == {"input_shape": [1, 2, 2]}


def test_load_real_zoo_model(tmp_path):
    model = cnnkit.models.create("lenet", num_classes=7)
    save(model, tmp_path / "lenet.safetensors")
    out = cnnkit.load(tmp_path / "lenet.safetensors")
    assert type(out) is type(model) and out.config == model.config
    _assert_same_state(out.state_dict(), model.state_dict())


def test_load_without_model_or_config_returns_the_state_dict(tmp_path):
    """As torch.load: a file without an architecture config gives back its state dict."""
    net = TinyNet()
    save(net, tmp_path / "n.safetensors")
    state = load(tmp_path / "n.safetensors")
    assert list(state) == list(net.state_dict())
    _assert_same_state({k: v.numpy() for k, v in state.items()}, net.state_dict())
    fresh = TinyNet()
    fresh.load_state_dict(state)
    _assert_same_state(fresh.state_dict(), net.state_dict())


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_state_dict_saved_as_pt_is_a_pytorch_file(tmp_path, suffix):
    net = TinyNet()
    path = tmp_path / f"net{suffix}"
    save(net.state_dict(), path)
    with open(path, "rb") as f:
        assert f.read(4) == b"PK\x03\x04"               # PyTorch's zip format
    state = load(path)
    _assert_same_state({k: v.numpy() for k, v in state.items()}, net.state_dict())
    torch = pytest.importorskip("torch")
    ref = torch.load(path, weights_only=True)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(ref[k].numpy(), v)


def test_load_into_wrong_model(tmp_path):
    class Other(Module):
        def __init__(self):
            super().__init__()
            self.scale = Parameter(np.zeros(5, np.float32))

    save(TinyNet(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)w\.safetensors: the weights do not fit the model.*scale: expected shape \(5,\)"):
        load(tmp_path / "w.safetensors", model=Other())
    out = load(tmp_path / "w.safetensors", model=TinyNet(), strict=False)
    assert out.checkpoint_meta == {}


def test_plain_safetensors_file(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    net = TinyNet()
    safetensors_numpy.save_file(net.state_dict(), str(tmp_path / "plain.safetensors"))
    ckpt = load_checkpoint(tmp_path / "plain.safetensors")
    assert ckpt.config is None and ckpt.cnnkit_version is None
    out = load(tmp_path / "plain.safetensors", model=TinyNet(seed=5))
    _assert_same_state(out.state_dict(), net.state_dict())


# ---------------------------------------------------------------------------- damaged files
@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    save(TinyNet(), path, optimizer=_fake_optimizer_state(np.random.default_rng(1)), meta={"epoch": 1})
    return path


def test_atomic_save_failure_keeps_old_checkpoint(good_file, monkeypatch):
    before = good_file.read_bytes()
    real_fsync = os.fsync

    def crash(fd):  # the new bytes are written but the save dies before the rename
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="Input/output"):
        save(TinyNet(seed=3), good_file, meta={"epoch": 2})
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert good_file.read_bytes() == before
    assert sorted(os.listdir(good_file.parent)) == ["good.safetensors"]
    assert load_checkpoint(good_file).meta == {"epoch": 1}


def test_truncated_file(good_file, tmp_path):
    data = good_file.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    for cut in (4, 8 + header_len // 2, 8 + header_len + 3, len(data) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.safetensors is not a valid safetensors"):
            load_checkpoint(path)


def _rewrite_header(src, dst, edit):
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = edit(data[8:8 + n].decode("utf-8"))
    assert len(header) == n  # same length: only the content is tampered with
    dst.write_bytes(data[:8] + header.encode("utf-8") + data[8 + n:])


def test_tampered_header(good_file, tmp_path):
    bad_json = tmp_path / "json.safetensors"
    _rewrite_header(good_file, bad_json, lambda h: h.replace('"', "'", 1))
    with pytest.raises(CheckpointError, match=r"json\.safetensors .*not valid JSON"):
        load_checkpoint(bad_json)

    bad_offsets = tmp_path / "offsets.safetensors"

    def shift_offsets(h):
        header = json.loads(h)
        key = next(k for k in header if k != "__metadata__" and header[k]["data_offsets"][0] > 0)
        start, end = header[key]["data_offsets"]
        old = f'"data_offsets":[{start},{end}]'
        assert old in h
        return h.replace(old, f'"data_offsets":[{start - 1},{end - 1}]'.ljust(len(old)))

    _rewrite_header(good_file, bad_offsets, shift_offsets)
    with pytest.raises(CheckpointError, match=r"offsets\.safetensors is not a valid safetensors checkpoint"):
        load_checkpoint(bad_offsets)

    bad_meta = tmp_path / "meta.safetensors"
    _rewrite_header(good_file, bad_meta, lambda h: h.replace('{\\"epoch\\": 1}', '{\\"epoch\\": 1 '))
    with pytest.raises(CheckpointError, match=r"meta\.safetensors: metadata field 'meta' is not valid JSON"):
        load_checkpoint(bad_meta)


def test_newer_format_version_is_refused(good_file, tmp_path):
    newer = tmp_path / "newer.safetensors"
    _rewrite_header(good_file, newer, lambda h: h.replace('"format_version":"1"', '"format_version":"9"'))
    with pytest.raises(CheckpointError, match="format version 9 is newer"):
        load_checkpoint(newer)


def test_not_a_safetensors_file(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("just some text, not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"notes\.safetensors is not a valid safetensors checkpoint"):
        load_checkpoint(text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="only 0 bytes"):
        load(empty, model=TinyNet())
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_pth_file_gets_a_hint(tmp_path):
    from cnnkit.io import save_torch

    save_torch({"w": np.ones(2, np.float32)}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=r"weights\.pth .*load_torch"):
        load_checkpoint(tmp_path / "weights.pth")
