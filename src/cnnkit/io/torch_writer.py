"""Write NumPy state dicts as PyTorch zip-format files (readable with ``weights_only=True``).

The file is what ``torch.save`` writes: a zip archive, stored uncompressed, holding
``archive/data.pkl`` (a protocol-2 pickle), one record ``archive/data/<key>`` with the raw
little-endian bytes of each array, ``archive/byteorder`` and ``archive/version``. Every
record's data starts on a 64-byte boundary, as torch aligns them, so torch can memory-map it.

The pickle is emitted opcode by opcode below rather than by ``pickle.Pickler``: the standard
pickler can only name a global it can import, and torch is never imported here. Each array
becomes ``torch._utils._rebuild_tensor_v2(<storage>, 0, size, stride, False, OrderedDict())``
with the storage a persistent id ``('storage', torch.<X>Storage, key, 'cpu', numel)``.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from .atomic import atomic_open
from .torch_dtypes import DTYPES, STORAGE_CLASS_OF

ARCHIVE = "archive"
ALIGNMENT = 64


class _Global:
    """A ``module.name`` reference emitted with the GLOBAL opcode."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


_ORDERED_DICT = _Global("collections", "OrderedDict")
_REBUILD_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
_REBUILD_V3 = _Global("torch._utils", "_rebuild_tensor_v3")
_UNTYPED = _Global("torch.storage", "UntypedStorage")


class _PickleWriter:
    """Emit a protocol-2 pickle of plain values, dicts, lists, tuples and arrays; arrays are
    collected in ``self.storages`` (key -> contiguous little-endian array)."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.storages: dict[str, np.ndarray] = {}

    def finish(self) -> bytes:
        self.out += b"."  # STOP
        return bytes(self.out)

    def value(self, x: Any, where: str) -> None:
        out = self.out
        if x is None:
            out += b"N"
        elif isinstance(x, (bool, np.bool_)):
            out += b"\x88" if x else b"\x89"
        elif isinstance(x, np.ndarray):
            self.tensor(x, where)
        elif isinstance(x, np.generic):
            self.value(x.item(), where)
        elif isinstance(x, int):
            self.integer(x)
        elif isinstance(x, float):
            out += b"G" + struct.pack(">d", x)
        elif isinstance(x, str):
            data = x.encode("utf-8")
            out += b"X" + struct.pack("<I", len(data)) + data
        elif isinstance(x, tuple):
            if x:
                self.sequence(x, b"(", b"t", where)  # MARK ... TUPLE
            else:
                out += b")"  # EMPTY_TUPLE
        elif isinstance(x, list):
            out += b"]"
            if x:
                self.sequence(x, b"(", b"e", where)  # MARK ... APPENDS
        elif isinstance(x, Mapping):
            self.mapping(x, where)
        elif isinstance(x, _Global):
            out += b"c" + f"{x.module}\n{x.name}\n".encode("ascii")
        else:
            raise TypeError(f"save_torch: cannot write {where} of type {type(x).__name__}; expected arrays, "
                            "numbers, strings, None, and dicts / lists / tuples of them")

    def integer(self, x: int) -> None:
        if 0 <= x < 256:
            self.out += b"K" + bytes([x])
        elif 0 <= x < 65536:
            self.out += b"M" + struct.pack("<H", x)
        elif -(2**31) <= x < 2**31:
            self.out += b"J" + struct.pack("<i", x)
        else:
            data = pickle.encode_long(x)
            self.out += b"\x8a" + bytes([len(data)]) + data  # LONG1

    def sequence(self, items, mark: bytes, end: bytes, where: str) -> None:
        self.out += mark
        for i, item in enumerate(items):
            self.value(item, f"{where}[{i}]")
        self.out += end

    def reduce(self, func: _Global, args: tuple, where: str) -> None:
        self.value(func, where)
        self.value(args, where)
        self.out += b"R"

    def mapping(self, d: Mapping, where: str) -> None:
        if isinstance(d, OrderedDict):
            self.reduce(_ORDERED_DICT, (), where)
        else:
            self.out += b"}"
        if d:
            self.out += b"("
            for k, v in d.items():
                if not isinstance(k, (str, int)):
                    raise TypeError(f"save_torch: dict keys must be str or int, found {k!r} in {where}")
                self.value(k, where)
                self.value(v, f"{where}[{k!r}]")
            self.out += b"u"  # SETITEMS

    def tensor(self, arr: np.ndarray, where: str) -> None:
        dtype = arr.dtype.newbyteorder("=") if arr.dtype.byteorder in "<>" else arr.dtype
        if dtype not in STORAGE_CLASS_OF and dtype.name not in DTYPES:
            raise TypeError(f"save_torch: {where} has dtype {arr.dtype}, which PyTorch cannot store")
        data = np.asarray(arr, dtype=dtype.newbyteorder("<"), order="C")
        key = str(len(self.storages))
        self.storages[key] = data
        stride, step = [], 1
        for n in reversed(arr.shape):  # C-contiguous strides in elements
            stride.insert(0, step)
            step *= max(n, 1)
        if dtype in STORAGE_CLASS_OF:
            storage = ("storage", _Global("torch", STORAGE_CLASS_OF[dtype]), key, "cpu", data.size)
            func, extra = _REBUILD_V2, ()
        else:  # uint16 / uint32 / uint64: untyped byte storage plus the dtype (torch's own choice)
            storage = ("storage", _UNTYPED, key, "cpu", data.nbytes)
            func, extra = _REBUILD_V3, (_Global("torch", dtype.name),)
        self.value(func, where)
        self.out += b"("  # MARK of the argument tuple
        self.value(storage, where)
        self.out += b"Q"  # BINPERSID: the storage tuple above is a persistent id
        for item in (0, tuple(arr.shape), tuple(stride), False):
            self.value(item, where)
        self.reduce(_ORDERED_DICT, (), where)  # backward hooks: an empty OrderedDict
        for item in extra:
            self.value(item, where)
        self.out += b"tR"  # TUPLE, REDUCE


def _write_aligned(zf: zipfile.ZipFile, f, name: str, data: bytes | memoryview) -> None:
    """Add an uncompressed record whose data starts at a multiple of ALIGNMENT, padding the
    local header's extra field as torch does (extra-field id 'FB')."""
    info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(info.filename.encode("utf-8")) + 4
    if len(data) * 1.05 > zipfile.ZIP64_LIMIT:  # zipfile then appends a 20-byte zip64 extra field
        header += 20
    pad = (-(f.tell() + header)) % ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def save_torch(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``state_dict`` as a PyTorch zip-format file, atomically.

    ``torch.load`` with ``weights_only=True`` reads it back bit-exact, as an ``OrderedDict`` of
    tensors (plain dicts stay dicts). Nested dicts, lists, tuples, numbers, strings and None are
    allowed too, so ``{"model": sd, "epoch": 3}`` works. NumPy scalars are written as Python
    numbers; 0-d arrays as 0-d tensors.

    Args:
        state_dict: mapping of names to arrays (any dtype PyTorch has; bfloat16 does not exist
            in NumPy), e.g. ``model.state_dict()``.
        path: the file to write (usually ``.pth`` / ``.pt``).

    Raises:
        TypeError: a value that PyTorch's safe loader could not read (the message names it).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"save_torch: state_dict must be a mapping, found {type(state_dict).__name__}")
    writer = _PickleWriter()
    writer.value(state_dict, "state_dict")
    records = [("data.pkl", writer.finish()), ("byteorder", b"little")]
    records += [(f"data/{key}", memoryview(arr.reshape(-1).view(np.uint8))) for key, arr in writer.storages.items()]
    records.append(("version", b"3\n"))
    with atomic_open(path) as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in records:
                _write_aligned(zf, f, name, data)
