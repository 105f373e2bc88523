"""The element types of PyTorch files and their NumPy equivalents (shared by reader and writer).

A PyTorch pickle names element types two ways: legacy typed storage classes
(``torch.FloatStorage``, ...) and, for dtypes that have no such class (``torch.uint16`` ...),
a ``torch.<dtype>`` object passed to ``_rebuild_tensor_v3`` next to an untyped byte storage.
bfloat16 has no NumPy type: it is read as its raw 16 bits and widened exactly to float32
(bfloat16 is the top half of a float32, so no value changes).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TorchDType(NamedTuple):
    """One element type: its torch name, the NumPy dtype of its raw bytes, and the dtype
    the reader returns (differs only for bfloat16)."""

    name: str
    raw: np.dtype
    out: np.dtype


def _t(name: str, raw, out=None) -> TorchDType:
    return TorchDType(name, np.dtype(raw), np.dtype(out if out is not None else raw))


# torch dtype name -> type; the order puts each NumPy dtype's canonical name first.
DTYPES: dict[str, TorchDType] = {d.name: d for d in (
    _t("float32", np.float32), _t("float64", np.float64), _t("float16", np.float16),
    _t("bfloat16", np.uint16, np.float32),
    _t("int64", np.int64), _t("int32", np.int32), _t("int16", np.int16), _t("int8", np.int8),
    _t("uint8", np.uint8), _t("uint16", np.uint16), _t("uint32", np.uint32), _t("uint64", np.uint64),
    _t("bool", np.bool_), _t("complex64", np.complex64), _t("complex128", np.complex128),
)}

# Legacy typed storage class name -> dtype name (torch/storage.py).
STORAGE_CLASSES: dict[str, str] = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}
UNTYPED_STORAGE = "UntypedStorage"  # raw bytes; the tensor's dtype comes with _rebuild_tensor_v3

# NumPy dtype -> storage class name for the writer (dtypes with a legacy class).
STORAGE_CLASS_OF = {DTYPES[d].raw: cls for cls, d in STORAGE_CLASSES.items() if d != "bfloat16"}


def widen(raw: np.ndarray, dtype: TorchDType) -> np.ndarray:
    """Raw elements -> the array the reader returns (bfloat16 bits -> float32, exactly)."""
    if dtype.name == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw
