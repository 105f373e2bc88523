"""Read PyTorch ``.pth`` / ``.pt`` files into NumPy arrays, without torch and without running code.

Two formats exist:

* zip (torch >= 1.6, the default): ``<name>/data.pkl`` is a pickle of the object whose
  tensors point, through persistent ids ``('storage', type, key, location, numel)``, at the
  records ``<name>/data/<key>``; ``<name>/byteorder`` says 'little' or 'big' (absent: little).
* legacy (``_use_new_zipfile_serialization=False`` and files from before 1.6): five pickles in
  a row -- a magic number, the protocol version 1001, system info (byte order), the object,
  the list of storage keys -- then, for each key, an 8-byte element count and the raw bytes.

Both are unpickled by the restricted unpickler of ``torch_pickle``; tensors come back as
C-contiguous NumPy copies with their dtype, sizes, strides and storage offsets honoured.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from typing import Any, Sequence

import numpy as np

from .checkpoint import require_file
from .limits import MAX_DEFLATE_RATIO
from .torch_pickle import StorageRef, TorchFileError, materialize, unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Keys under which training scripts commonly nest the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")


def read_torch(path: str | os.PathLike) -> Any:
    """Read the whole object stored in a PyTorch file (zip or legacy format).

    Tensors become NumPy arrays; dicts, lists, tuples, numbers, strings and None come back as
    they are; a ``torch.device`` becomes its string ("cpu", "cuda:0") and a ``torch.dtype`` its
    name ("float32"). Only what a state dict or a simple training checkpoint needs is accepted;
    anything else is refused before it could run.

    Args:
        path: the ``.pth`` / ``.pt`` file.

    Returns:
        The stored object (usually an ``OrderedDict`` of arrays).

    Raises:
        FileNotFoundError: no such file.
        TorchFileError: not a PyTorch file, a refused global (e.g. ``os.system``), corrupt or
            truncated data; the message names the file.
    """
    path = require_file(path, "load_torch")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        return _read_zip(path)
    if head[:1] == b"\x80":
        return _read_legacy(path)
    found = "an empty file" if not head else f"first bytes {head!r}"
    raise TorchFileError(f"{path}: not a PyTorch file (expected a zip archive or a pickle stream, found {found})")


def load_torch(path: str | os.PathLike, key: str | Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict as ``{name: np.ndarray}`` (zip or legacy format, no torch needed).

    Dtypes are kept (float32, float64, float16, int64, int32, int16, int8, uint8, bool, complex,
    uint16/32/64); bfloat16 is returned as float32 (exact: bfloat16 is the top half of a float32).

    Args:
        path: the ``.pth`` / ``.pt`` file.
        key: where the state dict sits inside a checkpoint dict, e.g. ``"model"``, or a
            sequence of keys for deeper nesting, e.g. ``("ema", "state_dict")``. When None,
            a file that is not itself a flat dict of tensors is unwrapped through the first
            of ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``network``, ``module``
            that holds a dict.

    Returns:
        dict mapping the parameter / buffer names to C-contiguous arrays, in file order.

    Raises:
        TorchFileError: the file cannot be read, ``key`` is missing, or the chosen dict holds
            something other than tensors (the message lists what it found).
    """
    path = os.fspath(path)
    obj = read_torch(path)
    where = "the file"
    if key is not None:
        for k in ([key] if isinstance(key, str) else list(key)):
            if not isinstance(obj, dict) or k not in obj:
                keys = list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__
                raise TorchFileError(f"{path}: key {k!r} not found in {where}; available: {keys}")
            obj, where = obj[k], f"{where}[{k!r}]"
    elif isinstance(obj, dict) and not _is_tensor_dict(obj):
        for k in WRAPPER_KEYS:
            if isinstance(obj.get(k), dict):
                obj, where = obj[k], f"{where}[{k!r}]"
                break
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: {where} holds a {type(obj).__name__}, expected a dict of tensors")
    bad = {k: type(v).__name__ for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))}
    if bad:
        shown = ", ".join(f"{k!r}: {t}" for k, t in list(bad.items())[:10])
        raise TorchFileError(
            f"{path}: {where} is not a state dict (non-tensor entries {shown}); pass key= to choose the "
            "state dict inside a checkpoint, or use cnnkit.io.read_torch for the whole object"
        )
    return dict(obj)


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, np.ndarray) for v in obj.values())


def _check_size(path: str, ref: StorageRef, got: int) -> None:
    if got != ref.nbytes:
        raise TorchFileError(
            f"{path}: storage '{ref.key}' should hold {ref.numel} elements ({ref.nbytes} bytes), found {got} bytes "
            "(truncated or corrupt file)"
        )


def _read_member(zf: zipfile.ZipFile, name: str, path: str) -> bytes:
    """A member's bytes, its declared size checked before anything is decompressed against
    what its compressed bytes can hold (stored: the same size; deflated: at most
    MAX_DEFLATE_RATIO times); never more than the declared size is decompressed."""
    info = zf.getinfo(name)
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
    if info.file_size > ratio * info.compress_size + 64:
        raise TorchFileError(f"{path}: record {name} declares {info.file_size} bytes from {info.compress_size} "
                             f"stored bytes, more than its compression allows (corrupt or hostile file)")
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)  # never more than declared (+1 to detect a lie)
    if len(data) != info.file_size:
        raise TorchFileError(f"{path}: record {name} declares {info.file_size} bytes, holds {len(data)}")
    return data


def _read_zip(path: str) -> Any:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            pickles = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
            if not pickles:
                what = "a TorchScript archive (torch.jit.save)" if any(n.endswith("/constants.pkl") for n in names) \
                    else "a zip file without <name>/data.pkl"
                raise TorchFileError(f"{path}: not a PyTorch state-dict file: it is {what}")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "<"
            if prefix + "byteorder" in names:
                order = _read_member(zf, prefix + "byteorder", path)[:16].decode("ascii", "replace").strip()
                if order not in ("little", "big"):
                    raise TorchFileError(f"{path}: unknown byteorder record {order!r}, expected 'little' or 'big'")
                byteorder = "<" if order == "little" else ">"
            obj = unpickle(_read_member(zf, pickles[0], path), path)

            def read_storage(ref: StorageRef) -> np.ndarray:
                name = f"{prefix}data/{ref.key}"
                if name not in names:
                    raise TorchFileError(f"{path}: storage record {name} is missing")
                _check_size(path, ref, zf.getinfo(name).file_size)  # before decompressing anything
                data = _read_member(zf, name, path)
                _check_size(path, ref, len(data))
                return np.frombuffer(data, dtype=np.uint8)

            return materialize(obj, read_storage, byteorder, path)
    except TorchFileError:
        raise
    except zipfile.BadZipFile as exc:
        raise TorchFileError(f"{path}: corrupt or truncated zip archive ({exc})") from exc
    # What zipfile raises for damaged archives besides BadZipFile: undecodable member names
    # (UnicodeDecodeError), unsupported or encrypted members, cut streams, bad header fields.
    except (EOFError, OSError, zlib.error, NotImplementedError, RuntimeError, ValueError, struct.error,
            OverflowError) as exc:
        raise TorchFileError(f"{path}: truncated or unreadable archive ({type(exc).__name__}: {exc})") from exc


def _read_legacy(path: str) -> Any:
    storages: dict[str, StorageRef] = {}
    with open(path, "rb") as raw_file:
        # In memory: the file's own size bounds every read, and the pickles' length fields are
        # checked against the bytes that follow them (torch_pickle.unpickle).
        content = raw_file.read()
    file_size = len(content)
    with io.BytesIO(content) as f:
        magic = unpickle(f, path)
        if magic != LEGACY_MAGIC:
            raise TorchFileError(f"{path}: not a PyTorch file (a pickle without the legacy magic number)")
        protocol = unpickle(f, path)
        if protocol != LEGACY_PROTOCOL:
            raise TorchFileError(f"{path}: unsupported legacy protocol version {protocol!r}, expected {LEGACY_PROTOCOL}")
        sys_info = unpickle(f, path)
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        byteorder = "<" if little else ">"
        obj = unpickle(f, path, storages)
        keys = unpickle(f, path)
        if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
            raise TorchFileError(f"{path}: malformed list of storage keys")
        data: dict[str, np.ndarray] = {}
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else key
            if key not in storages:
                raise TorchFileError(f"{path}: storage '{key}' is listed but no tensor uses it")
            ref = storages[key]
            head = f.read(8)
            if len(head) != 8:
                raise TorchFileError(f"{path}: truncated before the data of storage '{key}'")
            numel = int.from_bytes(head, "little" if little else "big")
            if numel != ref.numel:
                raise TorchFileError(f"{path}: storage '{key}' has {numel} elements, its tensor expects {ref.numel}")
            if f.tell() + ref.nbytes > file_size:
                raise TorchFileError(
                    f"{path}: truncated: storage '{key}' needs {ref.nbytes} bytes at offset {f.tell()}, "
                    f"the file has {file_size} bytes"
                )
            raw = f.read(ref.nbytes)
            _check_size(path, ref, len(raw))
            data[key] = np.frombuffer(raw, dtype=np.uint8)

    def read_storage(ref: StorageRef) -> np.ndarray:
        if ref.key not in data:
            raise TorchFileError(f"{path}: no data for storage '{ref.key}'")
        return data[ref.key]

    return materialize(obj, read_storage, byteorder, path)


__all__ = ["read_torch", "load_torch", "TorchFileError"]
