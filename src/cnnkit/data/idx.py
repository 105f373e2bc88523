"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``00 00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the values in C order. Files may be gzip-compressed (detected by the
gzip magic bytes, not only by the ``.gz`` suffix). Every way a file can be wrong -- bad magic,
bad dtype, truncated or oversized payload, corrupt gzip -- raises ONE ``DataFormatError``
whose message starts with the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import DataFormatError

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
_KIND_MAGIC = {"labels": LABELS_MAGIC, "images": IMAGES_MAGIC}
_KIND_TEXT = {"labels": "IDX uint8 labels, 1 dimension", "images": "IDX uint8 images, 3 dimensions"}

# IDX type codes; the values are big-endian on disk.
_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open(path: Path):
    with open(path, "rb") as f:
        head = f.read(2)
    if head == GZIP_MAGIC:
        return gzip.open(path, "rb")
    if path.suffix == ".gz":
        raise DataFormatError(f"{path.name}: not a gzip file (name ends in .gz but the gzip "
                              f"magic bytes 1f 8b are missing; found {head.hex(' ') or 'nothing'})")
    return open(path, "rb")


_CHUNK = 1 << 20


def _read_up_to(f, expected: int) -> bytearray:
    """Up to ``expected`` bytes of ``f``, read in chunks: memory grows with the bytes the file
    really holds, never with what its header claims (a gzip stream's size is unknown up front)."""
    buf = bytearray()
    while len(buf) < expected:
        chunk = f.read(min(_CHUNK, expected - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def read_idx(path: str | os.PathLike, kind: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a writable, native-endian array.

    Args:
        path: the file.
        kind: ``"images"`` requires magic 0x00000803 (uint8, 3 dims), ``"labels"`` requires
            0x00000801 (uint8, 1 dim); None accepts any valid IDX file.

    Returns:
        np.ndarray with the declared shape (uint8 for MNIST-style files).

    Raises:
        DataFormatError: naming the file and what was wrong.
        FileNotFoundError: when the file does not exist.
    """
    path = Path(path)
    if kind is not None and kind not in _KIND_MAGIC:
        raise ValueError(f"read_idx: kind must be 'images', 'labels' or None, got {kind!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected an IDX file")
    try:
        with _open(path) as f:
            return _parse(f, path.name, kind)
    except DataFormatError:
        raise
    except EOFError as e:  # gzip stream cut short
        raise DataFormatError(f"{path.name}: truncated gzip stream ({e})") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(f"{path.name}: corrupt gzip data ({e})") from None


#: Dimensions an IDX header may declare: NumPy 1.x arrays have at most 32 (2.x: 64).
_MAX_NDIM = 32


def _parse(f, name: str, kind: str | None) -> np.ndarray:
    magic_bytes = f.read(4)
    if len(magic_bytes) < 4:
        raise DataFormatError(f"{name}: truncated: file has {len(magic_bytes)} bytes, "
                              f"an IDX header needs at least 4")
    magic = int.from_bytes(magic_bytes, "big")
    zero, dtype_code, ndim = magic >> 16, magic_bytes[2], magic_bytes[3]
    if kind is not None and magic != _KIND_MAGIC[kind]:
        raise DataFormatError(f"{name}: bad magic number 0x{magic:08x}, expected "
                              f"0x{_KIND_MAGIC[kind]:08x} ({_KIND_TEXT[kind]})")
    if zero != 0 or dtype_code not in _DTYPES or ndim == 0:
        raise DataFormatError(f"{name}: bad magic number 0x{magic:08x}: not an IDX file "
                              f"(expected 00 00 <type 08..0e> <ndim >= 1>)")
    dims_bytes = f.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataFormatError(f"{name}: truncated: header declares {ndim} dimensions "
                              f"({4 * ndim} bytes), found {len(dims_bytes)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    dtype = _DTYPES[dtype_code]
    expected = math.prod(shape) * dtype.itemsize  # exact: no int64 overflow for 255 huge dims
    data = _read_up_to(f, expected)
    got = len(data)
    declared = "x".join(map(str, shape))
    if got < expected:
        raise DataFormatError(f"{name}: truncated: header declares {declared} = {expected} "
                              f"bytes, found {got}")
    if f.read(1):
        raise DataFormatError(f"{name}: header declares {declared} = {expected} bytes of data, "
                              f"but the file has more (trailing bytes)")
    # The bytes are all there; NumPy still refuses more dimensions, and an empty shape whose
    # other sizes overflow its index type ("array is too big"): say so in this reader's words.
    if ndim > _MAX_NDIM:
        raise DataFormatError(f"{name}: header declares {ndim} dimensions, at most {_MAX_NDIM} are supported")
    if math.prod(d for d in shape if d) * dtype.itemsize > np.iinfo(np.intp).max:
        raise DataFormatError(f"{name}: header declares dimensions {declared}, too large for an array")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr if dtype.isnative or dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip when ``compress`` or, if None, when the name ends in .gz).

    Args:
        path: destination file.
        array: any array whose dtype IDX supports (uint8, int8, int16, int32, float32, float64).
        compress: force gzip on/off; default from the suffix.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {v.newbyteorder("=") if v.itemsize > 1 else v: k for k, v in _DTYPES.items()}
    native = array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype
    if native not in codes or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: cannot store dtype {array.dtype} with {array.ndim} dims in IDX")
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(big).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    from ..io.atomic import atomic_write_bytes

    atomic_write_bytes(path, payload)
