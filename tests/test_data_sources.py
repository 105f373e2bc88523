"""Where datasets are found, how they are downloaded, and MNIST / Fashion-MNIST / CIFAR-10 readers.

Every test here runs with HOME, $CNNKIT_DATA and the system folder pointed into tmp_path and
the network fetcher replaced, so nothing outside tmp_path is read and nothing is downloaded.
"""

import hashlib
import io
import os
import tarfile
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cnnkit.data.cifar as cifar_mod
import cnnkit.data.download as download_mod
import cnnkit.data.locate as locate_mod
from cnnkit.data import (CIFAR10, MNIST, DataFormatError, DatasetNotFoundError, DownloadError,
                         FashionMNIST, find_datasets, write_idx)
from cnnkit.data.download import download_file

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    monkeypatch.setattr(locate_mod, "SYSTEM_DIR", tmp_path / "system")

    def no_network(url, out):
        pytest.fail(f"test tried to download {url}")  # BaseException: no library code can swallow it

    monkeypatch.setattr(download_mod, "fetch", no_network)
    return SimpleNamespace(tmp=tmp_path, home=home, cache=home / ".cache" / "cnnkit",
                           system=tmp_path / "system", monkeypatch=monkeypatch)


def make_idx_split(folder: Path, n: int, train: bool = True, gz: bool = True, seed: int = 0,
                   n_labels: int | None = None, max_label: int = 9):
    """Write a split's two IDX files with n samples; return (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, max_label + 1, size=n if n_labels is None else n_labels, dtype=np.uint8)
    prefix = "train" if train else "t10k"
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


# --- resolution order ------------------------------------------------------------------------

def test_resolution_order_root_env_cache_system(env):
    root, envdir = env.tmp / "root", env.tmp / "envdata"
    make_idx_split(root / "fashion-mnist", 3)
    make_idx_split(envdir / "fashion-mnist", 4)
    make_idx_split(env.cache / "fashion-mnist", 5)
    make_idx_split(env.system / "fashion-mnist", 6)
    env.monkeypatch.setenv("CNNKIT_DATA", str(envdir))
    assert len(FashionMNIST(root=root, download=False)) == 3
    assert len(FashionMNIST(download=False)) == 4
    env.monkeypatch.delenv("CNNKIT_DATA")
    assert len(FashionMNIST(download=False)) == 5
    ds = FashionMNIST(root=env.tmp / "empty-root", download=False)  # a root without the data
    assert len(ds) == 5 and ds.root == env.cache / "fashion-mnist"
    for f in (env.cache / "fashion-mnist").iterdir():
        f.unlink()
    ds = FashionMNIST(download=False)
    assert len(ds) == 6 and ds.root == env.system / "fashion-mnist"


def test_root_and_env_accept_the_files_directly(env):
    make_idx_split(env.tmp / "flat", 3)
    assert len(FashionMNIST(root=env.tmp / "flat", download=False)) == 3
    make_idx_split(env.tmp / "flat-env", 4)
    env.monkeypatch.setenv("CNNKIT_DATA", str(env.tmp / "flat-env"))
    assert len(MNIST(download=False)) == 4


def test_incomplete_folder_is_skipped(env):
    make_idx_split(env.tmp / "root", 3)
    (env.tmp / "root" / "train-labels-idx1-ubyte.gz").unlink()
    make_idx_split(env.system / "mnist", 6)
    assert len(MNIST(root=env.tmp / "root", download=False)) == 6


def test_split_needs_only_its_own_files_and_raw_files_work(env):
    images, labels = make_idx_split(env.tmp / "r", 4, train=False, gz=False)
    ds = MNIST(root=env.tmp / "r", train=False, download=False)
    np.testing.assert_array_equal(ds.data, images)
    np.testing.assert_array_equal(ds.targets, labels)
    with pytest.raises(DatasetNotFoundError):
        MNIST(root=env.tmp / "r", train=True, download=False)


# --- dataset contents -------------------------------------------------------------------------

def test_fashion_mnist_arrays_items_and_classes(env):
    images, labels = make_idx_split(env.tmp / "r", 5)
    ds = FashionMNIST(root=env.tmp / "r", download=False)
    assert ds.name == "fashion-mnist" and len(ds) == 5
    assert ds.data.dtype == np.uint8 and ds.data.shape == (5, 28, 28)
    assert ds.targets.dtype == np.int64
    assert ds.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    x, y = ds[2]
    assert x.dtype == np.float32 and x.shape == (1, 28, 28)
    np.testing.assert_array_equal(x[0], images[2].astype(np.float32) / np.float32(255))
    assert y == labels[2] and isinstance(y, int)
    assert MNIST(root=env.tmp / "r", download=False).classes == [str(d) for d in range(10)]


def test_mismatched_image_and_label_counts(env):
    make_idx_split(env.tmp / "r", 5, n_labels=4)
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte.gz has 5 images but "
                                              r"train-labels-idx1-ubyte.gz has 4 labels"):
        FashionMNIST(root=env.tmp / "r", download=False)


def test_label_out_of_range(env):
    make_idx_split(env.tmp / "r", 50, max_label=12, seed=3)
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte.gz: label 1[0-2] out of range 0..9"):
        MNIST(root=env.tmp / "r", download=False)


def test_corrupt_file_in_found_folder_is_reported_not_skipped(env):
    make_idx_split(env.tmp / "r", 5)
    path = env.tmp / "r" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    make_idx_split(env.system / "fashion-mnist", 6)
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte.gz: truncated"):
        FashionMNIST(root=env.tmp / "r", download=False)


# --- not found / offline ----------------------------------------------------------------------

def test_offline_message_lists_every_place_and_how_to_get_data(env):
    def offline(url, out):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    env.monkeypatch.setattr(download_mod, "fetch", offline)
    env.monkeypatch.setenv("CNNKIT_DATA", str(env.tmp / "envdata"))
    with pytest.raises(DatasetNotFoundError) as err:
        FashionMNIST(root=env.tmp / "myroot")
    msg = str(err.value)
    for place in (env.tmp / "myroot" / "fashion-mnist", env.tmp / "myroot",
                  env.tmp / "envdata" / "fashion-mnist", env.tmp / "envdata",
                  env.cache / "fashion-mnist", env.system / "fashion-mnist"):
        assert str(place) in msg
    assert "train-images-idx3-ubyte.gz" in msg
    assert "Download: failed: download of http" in msg and "Temporary failure in name resolution" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "$CNNKIT_DATA/fashion-mnist" in msg
    assert not list((env.cache / "fashion-mnist").glob("*"))  # nothing half-written


def test_download_false_message(env):
    with pytest.raises(DatasetNotFoundError) as err:
        MNIST(download=False)
    msg = str(err.value)
    assert "download=False" in msg and "root argument: not set" in msg
    assert "$CNNKIT_DATA: not set" in msg and "$CNNKIT_DATA/mnist" in msg


# --- downloads ---------------------------------------------------------------------------------

def serve(files: dict[str, bytes], log: list):
    def fake_fetch(url, out):
        log.append(url)
        out.write(files[url.rsplit("/", 1)[-1]])
    return fake_fetch


def test_download_into_cache_with_checksum(env):
    src = env.tmp / "src"
    images, labels = make_idx_split(src, 4, train=False)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in files.items()}
    env.monkeypatch.setattr(FashionMNIST, "MD5", md5)
    log = []
    env.monkeypatch.setattr(download_mod, "fetch", serve(files, log))
    ds = FashionMNIST(train=False)
    assert sorted(log) == sorted(FashionMNIST.BASE_URL + n for n in files)
    assert ds.root == env.cache / "fashion-mnist"
    assert sorted(os.listdir(ds.root)) == sorted(files)  # no temporary files left
    np.testing.assert_array_equal(ds.data, images)
    log.clear()
    FashionMNIST(train=False)  # second time: found in the cache, no download
    assert log == []


def test_download_checksum_mismatch_leaves_nothing(env):
    src = env.tmp / "src"
    make_idx_split(src, 4)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    log = []
    env.monkeypatch.setattr(download_mod, "fetch", serve(files, log))  # official md5s won't match
    with pytest.raises(DatasetNotFoundError, match=r"md5 mismatch.*expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        FashionMNIST()
    assert os.listdir(env.cache / "fashion-mnist") == []


def test_download_file_sha256_md5_and_atomicity(env):
    dest = env.tmp / "dl" / "f.bin"
    payload = b"some bytes" * 1000
    sha = hashlib.sha256(payload).hexdigest()
    assert download_file("http://x/f.bin", dest, sha256=sha,
                         fetcher=lambda url, out: out.write(payload)) == dest
    assert dest.read_bytes() == payload
    dest.unlink()
    with pytest.raises(DownloadError, match=r"f.bin: sha256 mismatch.*expected 0+, found " + sha):
        download_file("http://x/f.bin", dest, sha256="0" * 64, fetcher=lambda url, out: out.write(payload))
    assert os.listdir(dest.parent) == []

    def dies_halfway(url, out):
        out.write(payload[:100])
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(DownloadError, match=r"download of http://x/f.bin failed: ConnectionResetError"):
        download_file("http://x/f.bin", dest, md5=hashlib.md5(payload).hexdigest(), fetcher=dies_halfway)
    assert os.listdir(dest.parent) == []
    # An interrupted download never replaces a good existing file.
    dest.write_bytes(b"good")
    with pytest.raises(DownloadError):
        download_file("http://x/f.bin", dest, fetcher=dies_halfway)
    assert dest.read_bytes() == b"good" and os.listdir(dest.parent) == ["f.bin"]


# --- CIFAR-10 ----------------------------------------------------------------------------------

CIFAR_NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_records(n: int, seed: int):
    """Random HWC images, labels, and their official binary encoding (label, R, G, B planes)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    blob = b"".join(bytes([labels[i]]) + images[i, :, :, 0].tobytes() + images[i, :, :, 1].tobytes()
                    + images[i, :, :, 2].tobytes() for i in range(n))
    return images, labels, blob


def make_cifar(folder: Path, archive: bool, per_batch: int = 3):
    folder.mkdir(parents=True, exist_ok=True)
    members, train_imgs, train_lbls = {}, [], []
    for k in range(1, 6):
        im, lb, blob = cifar_records(per_batch, seed=k)
        members[f"data_batch_{k}.bin"] = blob
        train_imgs.append(im)
        train_lbls.append(lb)
    test_im, test_lb, members["test_batch.bin"] = cifar_records(per_batch + 1, seed=9)
    members["batches.meta.txt"] = ("\n".join(CIFAR_NAMES) + "\n\n").encode()
    if archive:
        with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tf:
            for name, blob in members.items():
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    else:
        (folder / "cifar-10-batches-bin").mkdir()
        for name, blob in members.items():
            (folder / "cifar-10-batches-bin" / name).write_bytes(blob)
    return (np.concatenate(train_imgs), np.concatenate(train_lbls)), (test_im, test_lb)


@pytest.mark.parametrize("archive", [False, True], ids=["extracted", "tar.gz"])
def test_cifar10_binary(env, archive):
    (tr_im, tr_lb), (te_im, te_lb) = make_cifar(env.tmp / "c" / "cifar-10", archive)
    train = CIFAR10(root=env.tmp / "c", download=False)
    test = CIFAR10(root=env.tmp / "c", train=False, download=False)
    assert train.name == "cifar-10" and len(train) == 15 and len(test) == 4
    assert train.data.dtype == np.uint8 and train.data.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(train.data, tr_im)
    np.testing.assert_array_equal(train.targets, tr_lb)
    np.testing.assert_array_equal(test.data, te_im)
    assert train.targets.dtype == np.int64
    assert train.classes == CIFAR_NAMES
    x, y = test[1]
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and y == te_lb[1]
    np.testing.assert_array_equal(x, te_im[1].transpose(2, 0, 1).astype(np.float32) / np.float32(255))


def test_cifar10_without_meta_uses_standard_names(env):
    make_cifar(env.tmp / "c", archive=False)
    (env.tmp / "c" / "cifar-10-batches-bin" / "batches.meta.txt").unlink()
    assert CIFAR10(root=env.tmp / "c", download=False).classes[0] == "airplane"


def test_cifar10_bad_record_size(env):
    make_cifar(env.tmp / "c", archive=False)
    path = env.tmp / "c" / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataFormatError, match=r"test_batch.bin: size 12287 bytes is not a positive "
                                              r"multiple of the 3073-byte"):
        CIFAR10(root=env.tmp / "c", train=False, download=False)


def test_cifar10_corrupt_or_incomplete_archive(env):
    folder = env.tmp / "c"
    folder.mkdir()
    (folder / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    with pytest.raises(DataFormatError, match=r"cifar-10-binary.tar.gz: not a readable tar.gz"):
        CIFAR10(root=folder, download=False)
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = 3073
        tf.addfile(info, io.BytesIO(bytes(3073)))
    with pytest.raises(DataFormatError, match=r"members \['test_batch.bin'\] missing"):
        CIFAR10(root=folder, train=False, download=False)


def test_cifar10_download(env):
    src = env.tmp / "src"
    (tr_im, _), _ = make_cifar(src, archive=True)
    blob = (src / "cifar-10-binary.tar.gz").read_bytes()
    env.monkeypatch.setattr(cifar_mod, "MD5", hashlib.md5(blob).hexdigest())
    log = []
    env.monkeypatch.setattr(download_mod, "fetch", serve({"cifar-10-binary.tar.gz": blob}, log))
    ds = CIFAR10()
    assert log == [cifar_mod.URL]
    assert os.listdir(env.cache / "cifar-10") == ["cifar-10-binary.tar.gz"]
    np.testing.assert_array_equal(ds.data, tr_im)


# --- find_datasets -----------------------------------------------------------------------------

def test_find_datasets_reports_locations(env):
    make_idx_split(env.system / "fashion-mnist", 3)
    make_cifar(env.cache / "cifar-10", archive=False)
    rows = {(r["name"], r["split"]): r for r in find_datasets()}
    assert rows[("fashion-mnist", "train")]["path"] == str(env.system / "fashion-mnist")
    assert rows[("fashion-mnist", "test")]["path"] is None
    assert rows[("cifar-10", "test")]["path"] == str(env.cache / "cifar-10")
    assert rows[("mnist", "train")]["path"] is None
    assert rows[("mnist", "train")]["download_to"] == str(env.cache / "mnist")
    assert [label for label, _ in rows[("mnist", "train")]["searched"]] == [
        "root argument", "$CNNKIT_DATA", "cache", "system"]
    from cnnkit.data import datasets_report
    assert str(env.system / "fashion-mnist") in datasets_report()


# --- the real data -----------------------------------------------------------------------------

def test_real_fashion_mnist():
    if not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real Fashion-MNIST not installed in {REAL_FASHION} "
                    f"(apt-get install dataset-fashion-mnist)")
    train = FashionMNIST(root=REAL_FASHION, download=False)
    test = FashionMNIST(root=REAL_FASHION, train=False, download=False)
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    assert train.targets.shape == (60000,) and test.targets.shape == (10000,)
    assert train.targets.min() == 0 and train.targets.max() == 9
    # Fashion-MNIST is balanced: 6000 / 1000 images per class.
    assert np.all(np.bincount(train.targets, minlength=10) == 6000)
    assert np.all(np.bincount(test.targets, minlength=10) == 1000)
    assert 0 < train.data.mean() < 255
