"""Builders of small hostile or corrupt files, shared by the hardening and fuzzing tests
(not a test module)."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np


def zip_pth(path, pickle_bytes: bytes, records=(), compression=zipfile.ZIP_STORED) -> None:
    """A torch zip-format file: ``archive/data.pkl`` plus ``archive/<name>`` records."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", b"3\n")
        for name, data in records:
            zf.writestr(f"archive/{name}", data)


def tensor_pickle(numel: int, offset: int, size, stride) -> bytes:
    """data.pkl of {'t': _rebuild_tensor_v2(FloatStorage '0' of numel, offset, size, stride)},
    the opcodes written out by hand (protocol 2), so any size / stride can be declared."""
    def tup(values):
        return b"(" + b"".join(_int(v) for v in values) + b"t"
    return (b"\x80\x02}(X\x01\x00\x00\x00t" + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
            + _int(numel) + b"tQ" + _int(offset) + tup(size) + tup(stride)
            + b"\x89ccollections\nOrderedDict\n)RtRu.")


def _int(v: int) -> bytes:
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = int(v).to_bytes(9, "little", signed=True)
    return b"\x8a\x09" + raw  # LONG1


def nested_lists_pickle(depth: int) -> bytes:
    """[[[...]]] ``depth`` deep, as EMPTY_LIST / APPEND opcodes (no recursion to build)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> bytes:
    """A safetensors file written by hand (metadata of any string content)."""
    header: dict = {}
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": {"float32": "F32", "int64": "I64", "uint8": "U8"}[arr.dtype.name],
                        "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def cnnkit_metadata(**fields: str) -> dict[str, str]:
    """Metadata of a cnnkit checkpoint with the given JSON-text fields."""
    return {"format": "cnnkit.checkpoint", "format_version": "1", **fields}
