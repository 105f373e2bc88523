"""IDX reader/writer: round trips and every way a file can be broken."""

import gzip
import struct

import numpy as np
import pytest

from cnnkit.data import DataFormatError, read_idx, write_idx


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    """Build an IDX file by hand from the format spec (independent of write_idx)."""
    header = struct.pack(">BBBB", 0, 0, dtype_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"])
def test_read_hand_built_file_raw_and_gz(tmp_path, images, name):
    raw = idx_bytes(images)
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    out = read_idx(path, "images")
    assert out.dtype == np.uint8 and out.shape == (5, 4, 3)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable


def test_gzip_detected_by_magic_not_suffix(tmp_path, images):
    path = tmp_path / "images-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx(path), images)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_write_read_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / f"x.idx{suffix}"
    write_idx(path, arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    # The writer produces exactly the spec's bytes.
    data = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    codes = {"u1": 8, "i1": 9, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
    assert data == idx_bytes(arr, codes[dtype])


def test_labels_round_trip(tmp_path):
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    write_idx(tmp_path / "l.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz", "labels"), labels)


def test_wrong_magic_for_kind(tmp_path, images):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(images))  # a 3-D file where labels are expected
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte: bad magic number "
                                              r"0x00000803, expected 0x00000801"):
        read_idx(path, "labels")


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "junk.idx"
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(DataFormatError, match=r"junk.idx: bad magic number 0x504b0304: not an IDX file"):
        read_idx(path)


def test_truncated_payload_message(tmp_path):
    images = np.zeros((60, 28, 28), np.uint8)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images)[:16 + 1234]))
    with pytest.raises(DataFormatError) as err:
        read_idx(path, "images")
    assert str(err.value) == ("train-images-idx3-ubyte.gz: truncated: header declares 60x28x28 = "
                              "47040 bytes, found 1234")


def test_truncated_header(tmp_path):
    path = tmp_path / "t.idx"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataFormatError, match=r"t.idx: truncated: header declares 3 dimensions"):
        read_idx(path)


def test_trailing_bytes(tmp_path, images):
    path = tmp_path / "t.idx"
    path.write_bytes(idx_bytes(images) + b"\x00")
    with pytest.raises(DataFormatError, match=r"t.idx: header declares 5x4x3 = 60 bytes.*more"):
        read_idx(path)


def test_gzip_stream_cut_short(tmp_path, images):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-12])
    with pytest.raises(DataFormatError, match=r"cut.gz: truncated gzip stream"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["deflate", "crc"])
def test_corrupt_gzip(tmp_path, images, damage):
    blob = bytearray(gzip.compress(idx_bytes(images)))
    if damage == "deflate":
        blob[15:25] = b"\xff" * 10  # garble the compressed stream
    else:
        blob[-8] ^= 1  # the stream decodes but its CRC32 no longer matches
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataFormatError, match=r"^bad.gz: corrupt gzip data"):
        read_idx(path)


def test_gz_suffix_without_gzip_magic(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(b"hello world")
    with pytest.raises(DataFormatError, match=r"plain.gz: not a gzip file"):
        read_idx(path)


def test_bad_kind_argument(tmp_path):
    with pytest.raises(ValueError, match="kind must be"):
        read_idx(tmp_path / "x", "pictures")


def test_empty_shape_whose_other_sizes_overflow(tmp_path):
    # Found by tests/test_fuzz_readers.py: 11 dimensions, two of them 0 (so no data bytes
    # are expected), the others multiplying past NumPy's index type.
    p = tmp_path / "huge-empty-idx"
    p.write_bytes(bytes.fromhex("0000080b0000000000000000000000020000000300000004"
                                "000102030405060708090a0b0c0d0e0f1011121314151617"))
    with pytest.raises(DataFormatError, match="too large for an array"):
        read_idx(p)


def test_more_dimensions_than_numpy_allows(tmp_path):
    p = tmp_path / "deep-idx"
    p.write_bytes(struct.pack(">I", 0x0800 + 40) + struct.pack(">40I", *([1] * 40)) + b"\x07")
    with pytest.raises(DataFormatError, match="40 dimensions, at most 32"):
        read_idx(p)
