"""Hostile and odd data files: IDX headers and CIFAR-10 archives cannot make the readers
allocate more than the bytes behind them, 16-bit images keep their content."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cnnkit.data import CIFAR10, DataFormatError, ImageFolder, read_idx
from cnnkit.data.image_folder import decode_image

MiB = 1 << 20


def _peak_bytes(fn, error=DataFormatError):
    tracemalloc.start()
    try:
        with pytest.raises(error):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_idx_header_declaring_billions_of_images_allocates_nothing(tmp_path, compress):
    payload = bytes([0, 0, 8, 3]) + struct.pack(">III", 4_000_000_000, 28, 28) + bytes(4096)
    path = tmp_path / ("huge.idx" + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(DataFormatError, match=r"huge\.idx(\.gz)?: truncated: header declares 4000000000x28x28 = "
                                              r"3136000000000 bytes, found 4096"):
        read_idx(path)
    assert _peak_bytes(lambda: read_idx(path)) < 4 * MiB  # reads go by 1 MiB chunks


def test_idx_dims_whose_product_overflows_int64(tmp_path):
    path = tmp_path / "overflow.idx"
    path.write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">IIII", *[0xFFFFFFFF] * 4) + bytes(16))
    with pytest.raises(DataFormatError, match=r"overflow\.idx: truncated: header declares .* = "
                                              r"340282366604025813516997721482669850625 bytes"):
        read_idx(path)


def test_idx_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder, expected an IDX file"):
        read_idx(tmp_path)


def test_idx_round_trip_still_exact(tmp_path):
    from cnnkit.data import write_idx

    x = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, x)
        np.testing.assert_array_equal(read_idx(tmp_path / name), x)


# ---------------------------------------------------------------------------- CIFAR-10 archive
def _archive(folder, headers_and_data: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    raw = b"".join(headers_and_data) + bytes(1024)
    (folder / "cifar-10-binary.tar.gz").write_bytes(gzip.compress(raw))


def test_cifar_member_declaring_gigabytes_is_refused_before_reading(tmp_path):
    info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
    info.size = 3 * 10 ** 9
    _archive(tmp_path, [info.tobuf(format=tarfile.GNU_FORMAT), bytes(MiB)])
    with pytest.raises(DataFormatError, match=r"cifar-10-binary\.tar\.gz: member cifar-10-batches-bin/test_batch"
                                              r"\.bin declares 3000000000 bytes, more than the 184380000"):
        CIFAR10(root=tmp_path, train=False, download=False)


def test_cifar_pax_header_declaring_gigabytes_is_refused(tmp_path):
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 2 * 10 ** 9
    _archive(tmp_path, [pax.tobuf(format=tarfile.USTAR_FORMAT), bytes(MiB)])
    peak = _peak_bytes(lambda: CIFAR10(root=tmp_path, train=False, download=False))
    with pytest.raises(DataFormatError, match=r"cifar-10-binary\.tar\.gz: a tar header asks to read 2000000000 "
                                              r"bytes at once"):
        CIFAR10(root=tmp_path, train=False, download=False)
    assert peak < 8 * MiB


def test_cifar_extracted_file_too_large_is_refused_before_reading(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    with open(folder / "test_batch.bin", "wb") as f:
        f.truncate(70000 * 3073)  # sparse: takes no disk space
    with pytest.raises(DataFormatError, match=r"test_batch\.bin: 215110000 bytes, more than the 184380000"):
        CIFAR10(root=tmp_path, train=False, download=False)


# ---------------------------------------------------------------------------- 16-bit images
def _gray16(path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")


def test_16bit_png_keeps_its_content_in_image_folder(tmp_path):
    values = np.array([[0, 256, 32768, 65535], [1000, 20000, 40000, 60000]], np.uint16)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        _gray16(tmp_path / c / "x.png", values)
    expected = (values >> 8).astype(np.uint8)  # the top 8 bits, as Pillow reads 16-bit RGB
    np.testing.assert_array_equal(decode_image(tmp_path / "a" / "x.png", grayscale=True), expected)
    ds = ImageFolder(tmp_path)
    np.testing.assert_array_equal(ds.data[0], np.repeat(expected[:, :, None], 3, axis=2))


def test_16bit_png_keeps_its_content_in_predict_and_finetune_preprocessing(tmp_path):
    from cnnkit.models.imagenet import as_pil_image, efficientnet_preprocess
    from cnnkit.predict import preprocess

    values = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    _gray16(tmp_path / "g.png", values)
    expected = (values >> 8).astype(np.float32) / np.float32(255)
    x = preprocess([str(tmp_path / "g.png")], {"input_shape": [1, 32, 32]})
    np.testing.assert_array_equal(x[0, 0], expected)
    np.testing.assert_array_equal(np.asarray(as_pil_image(str(tmp_path / "g.png"))), (values >> 8))
    eff = efficientnet_preprocess(str(tmp_path / "g.png"))
    # A ramp from black to white is mid-grey on average; clipped, all but its first column
    # would be white, (255 - 127) / 128 = 1.
    assert abs(float(np.median(eff))) < 0.1 and eff.min() < -0.5 and eff.max() > 0.5


def test_image_folder_passed_as_a_file(tmp_path):
    from cnnkit.models.imagenet import as_pil_image

    with pytest.raises(IsADirectoryError, match="is a folder, expected an image file"):
        as_pil_image(str(tmp_path))
