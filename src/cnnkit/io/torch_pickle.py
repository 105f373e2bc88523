"""A restricted unpickler for PyTorch files: state dicts come out, code never runs.

Python's pickle format is a small program: the GLOBAL opcode imports any name, REDUCE calls
it. A ``.pth`` file therefore could run ``os.system`` on load. This unpickler resolves the
few globals that a state dict legitimately needs to inert stand-ins of our own and refuses
every other name with an error naming it. Nothing from torch is imported, nothing is called
but the stand-ins below.

Allowed (the functions are handed to the pickle as ``AllowedCall`` tuples, never themselves):
    collections.OrderedDict                        the state dict (and empty backward-hook dicts)
    torch._utils._rebuild_tensor(_v2, _v3)         -> TensorRef (a placeholder, see below)
    torch._utils._rebuild_parameter(_with_state)   -> the tensor inside
    torch.<X>Storage, torch(.storage).UntypedStorage  -> StorageType (a name and a dtype)
    torch.<dtype> (float32, uint16, ...)           -> TorchDType, for _rebuild_tensor_v3
    torch.device                                   -> its string, e.g. "cpu": checkpoints sometimes
                                                      keep one, and building a string runs nothing
Refused on purpose, among everything else: torch.storage._load_from_bytes (it unpickles
nested bytes without restriction), torch._utils._rebuild_qtensor / sparse / meta tensors,
numpy scalars, and every TorchScript ``__torch__`` class.

Tensors are rebuilt in two steps because the legacy format stores the raw storage bytes
*after* the pickle: unpickling yields ``TensorRef`` placeholders, and ``materialize`` turns
them into arrays once the storages can be read.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import numpy as np

from .limits import MAX_NESTING
from .torch_dtypes import DTYPES, STORAGE_CLASSES, UNTYPED_STORAGE, TorchDType, widen


class TorchFileError(ValueError):
    """A PyTorch file that cannot be read: unsafe, corrupt, truncated or unsupported."""


class _PickledOrderedDict(OrderedDict):
    """What the pickle gets for ``collections.OrderedDict``.

    torch pickles a state dict's ``_metadata`` through the BUILD opcode, which sets attributes
    on the instance. Set freely, such an attribute could shadow a method (``items``, ``keys``)
    and change what the reader sees; like PyTorch's loader with ``weights_only=True`` this accepts only a
    dict state, and it keeps nothing of it (the metadata is torch's own bookkeeping).
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise TorchFileError(f"BUILD of an OrderedDict needs a dict of attributes, found {type(state).__name__}")
        shadowing = [k for k in state if hasattr(OrderedDict, k)]
        if shadowing:
            raise TorchFileError(f"BUILD of an OrderedDict may not set {shadowing[:5]} (names of its methods)")


class StorageType(NamedTuple):
    """Stand-in for ``torch.FloatStorage`` & co. (immutable: pickle's BUILD cannot alter it)."""

    name: str
    dtype: TorchDType | None  # None for UntypedStorage (raw bytes)


class StorageRef(NamedTuple):
    """A storage named by a persistent id: the record ``key`` holds ``numel`` elements;
    ``start`` / ``length`` select a legacy-format storage view (else the whole storage)."""

    key: str
    dtype: TorchDType | None
    numel: int
    start: int = 0
    length: int | None = None

    @property
    def nbytes(self) -> int:
        """Size of the whole storage's data record (untyped storages count bytes)."""
        return self.numel * (self.dtype.raw.itemsize if self.dtype is not None else 1)


class TensorRef(NamedTuple):
    """A tensor to build: ``size`` / ``stride`` / ``offset`` in elements of ``dtype``."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: TorchDType


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TorchFileError(f"tensor {what} must be a tuple of ints, found {value!r}")
    return tuple(value)


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any, dtype: TorchDType | None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise TorchFileError(f"tensor storage must be a storage reference, found {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise TorchFileError(f"tensor storage_offset must be an int, found {offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise TorchFileError(f"tensor size {size} and stride {stride} have different lengths")
    if dtype is None:
        dtype = storage.dtype
    if dtype is None:
        raise TorchFileError("a tensor on an untyped storage needs a dtype (_rebuild_tensor_v3)")
    return TensorRef(storage, offset, size, stride, dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, TorchDType):
        raise TorchFileError(f"_rebuild_tensor_v3 needs a torch dtype, found {dtype!r}")
    return _tensor_ref(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, TensorRef):
        raise TorchFileError(f"_rebuild_parameter expects a tensor, found {type(data).__name__}")
    return data  # a Parameter is just its tensor for us


def _device(kind, index=None) -> str:
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise TorchFileError(f"torch.device expects a string and an optional int, found {kind!r}, {index!r}")
    return kind if index is None else f"{kind}:{index}"


_FUNCTIONS: dict[str, Callable] = {
    "collections.OrderedDict": _PickledOrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.device": _device,
}


class AllowedCall(NamedTuple):
    """What the pickle gets for an allowed function: a callable tuple. The functions above
    stay out of the pickle's reach -- its BUILD opcode could otherwise set attributes such
    as ``__defaults__`` on them and change later loads; a tuple cannot be modified."""

    qualname: str

    def __call__(self, *args):
        return _FUNCTIONS[self.qualname](*args)


def _allowed_global(module: str, name: str) -> Any:
    """The stand-in for ``module.name``, or None when the name is not allowed."""
    if f"{module}.{name}" in _FUNCTIONS:
        return AllowedCall(f"{module}.{name}")
    if module == "torch" and name in STORAGE_CLASSES:
        return StorageType(name, DTYPES[STORAGE_CLASSES[name]])
    if module in ("torch", "torch.storage") and name == UNTYPED_STORAGE:
        return StorageType(name, None)
    if module == "torch" and name in DTYPES:
        return DTYPES[name]
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle one PyTorch pickle with only the allowed globals (see the module docstring).

    Args:
        file: a binary file positioned at the pickle.
        source: the file name, for error messages.
        storages: when given, a dict that collects every ``StorageRef`` by key as persistent
            ids are resolved (the legacy reader needs their dtypes to read the data after).
    """

    def __init__(self, file: io.BufferedIOBase, source: str, storages: dict | None = None):
        super().__init__(file, encoding="utf-8")
        self.source = source
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_global(module, name)
        if found is None:
            raise TorchFileError(
                f"{self.source}: refusing to load global '{module}.{name}': a PyTorch weights file may "
                "only contain tensors, numbers, strings and plain containers (loading never runs code)"
            )
        return found

    def persistent_load(self, pid: Any) -> StorageRef:
        # zip format:    ('storage', storage_type, key, location, numel)
        # legacy format: ('storage', storage_type, root_key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or not pid:
            raise TorchFileError(f"{self.source}: unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise TorchFileError(
                f"{self.source}: the file holds a whole pickled torch.nn.Module (its class and source "
                "code), not a state dict; save model.state_dict() with torch instead"
            )
        if kind != "storage" or len(pid) not in (5, 6):
            raise TorchFileError(f"{self.source}: unexpected persistent id {pid!r}")
        stype, key, _location, numel = pid[1:5]
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not isinstance(stype, StorageType) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise TorchFileError(f"{self.source}: malformed storage id {pid!r}")
        ref = StorageRef(key, stype.dtype, numel)
        if self.storages is not None:
            self.storages.setdefault(key, ref)
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy storage view: (view_key, offset, size) in elements
            if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
                raise TorchFileError(f"{self.source}: malformed storage view {view!r}")
            _, start, length = view
            ref = StorageRef(key, stype.dtype, numel, start, length)
        return ref


def _check_lengths(file: io.BytesIO, source: str) -> None:
    """Walk the opcodes of the pickle at ``file``'s position (``pickletools``, which reads each
    argument with a bounded ``read``) so that no length field larger than the bytes behind it
    reaches the C unpickler, which allocates a declared ``BINBYTES8`` / ``BYTEARRAY8`` length
    before reading. ``file`` is put back where it was."""
    start = file.tell()
    try:
        for _ in pickletools.genops(file):
            pass
    except Exception as exc:  # pickletools raises ValueError (truncated) or others (unknown opcode)
        raise TorchFileError(f"{source}: corrupt or truncated pickle data ({exc})") from None
    finally:
        file.seek(start)


def unpickle(data: bytes | io.BytesIO, source: str, storages: dict | None = None) -> Any:
    """Run the restricted unpickler on ``data`` (bytes, or an in-memory file positioned at the
    pickle: it is left just after it); every failure becomes a ``TorchFileError`` naming ``source``."""
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    if not isinstance(file, io.BytesIO):
        raise TypeError("unpickle: data must be bytes or an io.BytesIO (its lengths are checked in memory)")
    _check_lengths(file, source)
    try:
        return RestrictedUnpickler(file, source, storages).load()
    except TorchFileError as exc:
        if str(exc).startswith(source):
            raise
        raise TorchFileError(f"{source}: {exc}") from exc
    except Exception as exc:  # truncated / corrupt pickle streams raise many kinds of errors
        raise TorchFileError(f"{source}: corrupt or truncated pickle data ({type(exc).__name__}: {exc})") from exc


def tensor_from_storage(ref: TensorRef, data: np.ndarray, byteorder: str, source: str) -> np.ndarray:
    """Build the array of ``ref`` (a C-contiguous copy in native byte order) from the raw
    bytes ``data`` (1-D uint8) of its storage, written in ``byteorder`` ('<' or '>')."""
    storage = ref.storage
    if storage.dtype is not None and storage.dtype != ref.dtype:
        raise TorchFileError(f"{source}: tensor of dtype {ref.dtype.name} on a {storage.dtype.name} storage")
    dtype = ref.dtype.raw.newbyteorder(byteorder)
    if data.size % dtype.itemsize:
        raise TorchFileError(f"{source}: storage '{storage.key}' of {data.size} bytes is not a whole number "
                             f"of {ref.dtype.name} elements")
    raw = data.view(dtype)
    if storage.length is not None:  # legacy storage view
        if storage.start < 0 or storage.length < 0 or storage.start + storage.length > raw.size:
            raise TorchFileError(f"{source}: storage view [{storage.start}, +{storage.length}) outside storage "
                                 f"'{storage.key}' of {raw.size} elements")
        raw = raw[storage.start:storage.start + storage.length]
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise TorchFileError(f"{source}: negative size / stride / offset in tensor {ref.size} {ref.stride} "
                             f"offset {ref.offset}")
    numel = math.prod(ref.size)
    try:
        if numel == 0:
            return np.empty(ref.size, dtype=ref.dtype.out)
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= raw.size:
            raise TorchFileError(
                f"{source}: tensor of size {ref.size}, stride {ref.stride}, offset {ref.offset} reaches element "
                f"{last}, beyond storage '{storage.key}' of {raw.size} elements"
            )
        if numel > last - ref.offset + 1:
            # Overlapping elements (a stride of 0: torch's expand()): a C-contiguous copy could be
            # far larger than the bytes in the file, so return a read-only view of a private copy
            # of the storage span instead, as torch shares the storage.
            span = raw[ref.offset:last + 1].astype(dtype.newbyteorder("="))
            span = widen(span, ref.dtype)
            return np.lib.stride_tricks.as_strided(span, shape=ref.size, writeable=False,
                                                   strides=tuple(s * span.itemsize for s in ref.stride))
        view = np.lib.stride_tricks.as_strided(
            raw[ref.offset:], shape=ref.size, strides=tuple(s * raw.itemsize for s in ref.stride), writeable=False
        )
        out = np.array(view, dtype=dtype.newbyteorder("="), order="C", copy=True)
    except TorchFileError:
        raise
    except (ValueError, OverflowError, MemoryError) as exc:  # more than 64 dimensions, sizes past int64
        raise TorchFileError(f"{source}: tensor of size {ref.size}, stride {ref.stride} cannot be built "
                             f"({type(exc).__name__}: {exc})") from None
    return widen(out, ref.dtype)


_STAND_INS = (StorageRef, StorageType, TorchDType, AllowedCall)


def materialize(obj: Any, read_storage: Callable[[StorageRef], np.ndarray], byteorder: str, source: str) -> Any:
    """Replace every ``TensorRef`` in ``obj`` (nested dicts / lists / tuples) by its array.

    ``read_storage(ref)`` returns the raw bytes (1-D uint8) of the storage ``ref.key``; it is
    called once per storage, so tensors sharing a storage read its bytes once.
    """
    cache: dict[str, np.ndarray] = {}
    busy: set[int] = set()
    # One result per source object: a pickle may reference an object many times (its memo),
    # e.g. lists each holding the previous one twice; converting every reference anew would
    # take time and memory exponential in the file's size.
    done: dict[int, Any] = {}

    def walk(x: Any, depth: int) -> Any:
        if isinstance(x, TensorRef):
            if id(x) not in done:
                key = x.storage.key
                if key not in cache:
                    cache[key] = read_storage(x.storage)
                done[id(x)] = tensor_from_storage(x, cache[key], byteorder, source)
            return done[id(x)]
        if isinstance(x, TorchDType):  # a torch dtype kept as a value, e.g. in a config dict
            return x.name
        if isinstance(x, _STAND_INS):  # checked before the container case: stand-ins are tuples too
            raise TorchFileError(f"{source}: a bare {type(x).__name__} outside a tensor is not supported")
        if isinstance(x, (dict, list, tuple)):
            if id(x) in done:
                return done[id(x)]
            if id(x) in busy:
                raise TorchFileError(f"{source}: the pickle contains a cyclic structure")
            if depth >= MAX_NESTING:
                raise TorchFileError(f"{source}: containers nested more than {MAX_NESTING} deep (a state dict "
                                     "is a few levels deep); the file is corrupt or hostile")
            busy.add(id(x))
            try:
                if isinstance(x, dict):
                    # dict.items, not x.items: nothing in the pickle can redirect the call.
                    out = (OrderedDict if isinstance(x, OrderedDict) else dict)(
                        (k, walk(v, depth + 1)) for k, v in dict.items(x))
                else:
                    items = [walk(v, depth + 1) for v in x]
                    out = items if isinstance(x, list) else tuple(items)
            finally:
                busy.discard(id(x))
            done[id(x)] = out
            return out
        return x

    return walk(obj, 0)
