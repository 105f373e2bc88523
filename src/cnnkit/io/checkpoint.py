"""Checkpoints: one safetensors file with weights, optimizer state and a JSON description.

Layout of the file written by :func:`save`:

* tensors ``model.<key>`` -- the model's ``state_dict`` (integer buffers keep their dtype);
  ``optimizer.<index>.<name>`` -- the optimizer's per-parameter arrays (momentum, Adam moments);
  ``extra.<name>`` -- any additional arrays the caller passes as ``extra``.
* metadata (safetensors allows str -> str only; every value below is a JSON text):
  ``format`` = "cnnkit.checkpoint", ``format_version``, ``cnnkit_version``, ``model_keys``
  (the state-dict order), ``config`` (the zoo architecture ``{"name", "kwargs"}``, when the
  model has one), ``optimizer`` (param_groups and non-array state), ``scheduler``, ``meta``.

Loading parses JSON and raw little-endian arrays only, so it can never run code. Every
problem with the file -- truncated, tampered, not safetensors -- is a :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from .atomic import atomic_write_bytes

FORMAT = "cnnkit.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or used (the message names the file)."""


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds (see :func:`load_checkpoint`).

    Attributes:
        state_dict: the model's arrays by dotted name, in the model's order.
        config: the zoo architecture ``{"name": ..., "kwargs": {...}}``, or None.
        optimizer_state: ``{"state": {index: {name: array | number}}, "param_groups": [...]}``
            (PyTorch's layout, for ``optimizer.load_state_dict``), or None. Tuples in
            param_groups (e.g. Adam's betas) come back as lists.
        scheduler_state: the scheduler's ``state_dict()``, or None.
        meta: the user metadata (epoch, classes, history, RNG state ...); {} when none.
        extra: additional arrays saved with ``extra=``; {} when none.
        cnnkit_version: version of cnnkit that wrote the file (None for a plain safetensors file).
    """

    state_dict: dict[str, np.ndarray]
    config: dict | None = None
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    meta: dict = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    cnnkit_version: str | None = None


# ---------------------------------------------------------------------------------- saving
def _json_default(obj: Any) -> Any:
    # NumPy scalars and small arrays sneak into metadata (metrics, RNG states): store them plainly.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save: {what} must be JSON-serialisable: {exc}") from exc


def _state_of(obj: Any, what: str) -> Mapping:
    state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    if not isinstance(state, Mapping):
        raise TypeError(f"save: {what} must have state_dict() or be a dict, found {type(obj).__name__}")
    return state


def _split_optimizer_state(state: Mapping) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays of ``state['state']`` become tensors; everything else stays in the JSON part."""
    if "state" not in state or "param_groups" not in state:
        raise TypeError("save: optimizer state_dict must have 'state' and 'param_groups' entries")
    tensors: dict[str, np.ndarray] = {}
    plain: dict[str, dict] = {}
    for index, slots in state["state"].items():
        plain[str(index)] = {}
        for name, value in slots.items():
            if isinstance(value, np.ndarray):
                tensors[f"optimizer.{int(index)}.{name}"] = value
            else:
                plain[str(index)][name] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def save(model: Any, path: str | os.PathLike, optimizer: Any = None, meta: Mapping | None = None,
         scheduler: Any = None, extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write a checkpoint as one ``.safetensors`` file, atomically.

    Args:
        model: a ``cnnkit.nn.Module`` (its ``state_dict()``; its ``config`` when it was made by
            ``cnnkit.models.create``, so :func:`load` can rebuild it) or a state dict.
        path: the file to write, conventionally ``*.safetensors``. A bare state dict (or
            module) saved to a ``.pt`` / ``.pth`` name is written in PyTorch's format, as
            ``torch.save(model.state_dict(), "net.pt")`` would.
        optimizer: an optimizer (or its ``state_dict()``) to resume training from.
        meta: JSON-able user metadata, e.g. ``{"epoch": 3, "classes": [...], "input_shape":
            [1, 28, 28], "normalize": {...}}``. NumPy scalars are stored as plain numbers.
        scheduler: a learning-rate scheduler (or its JSON-able ``state_dict()``).
        extra: additional named arrays to store (e.g. EMA weights); read back in
            ``Checkpoint.extra``.

    Raises:
        TypeError: a part that cannot be stored (non-JSON-able meta, non-array extra ...).
    """
    is_module = hasattr(model, "state_dict") and not isinstance(model, Mapping)
    state = model.state_dict() if is_module else model
    if not isinstance(state, Mapping):
        raise TypeError(f"save: model must be a Module or a state dict, found {type(model).__name__}")
    if _is_torch_name(path) and optimizer is None and meta is None and scheduler is None and not extra:
        # torch.save(model.state_dict(), "net.pt"): PyTorch's own file format, so that the
        # file loads in PyTorch too (its loader with weights_only=True).
        from .torch_writer import save_torch

        save_torch({k: np.asarray(v) for k, v in state.items()}, path)
        return
    tensors = {f"model.{k}": np.asarray(v) for k, v in state.items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "cnnkit_version": _cnnkit_version(),
        "model_keys": _to_json(list(state), "the state_dict keys"),
    }
    config = getattr(model, "config", None) if is_module else None
    if config is not None:
        metadata["config"] = _to_json(config, "model.config")
    if optimizer is not None:
        opt_tensors, opt_plain = _split_optimizer_state(_state_of(optimizer, "optimizer"))
        tensors.update(opt_tensors)
        metadata["optimizer"] = _to_json(opt_plain, "the optimizer state")
    if scheduler is not None:
        metadata["scheduler"] = _to_json(dict(_state_of(scheduler, "scheduler")), "the scheduler state")
    if meta is not None:
        metadata["meta"] = _to_json(dict(meta), "meta")
    for name, value in (extra or {}).items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"save: extra[{name!r}] must be a NumPy array, found {type(value).__name__} "
                            "(put JSON-able values in meta)")
        tensors[f"extra.{name}"] = value
    for name, arr in tensors.items():
        if arr.dtype == object:
            raise TypeError(f"save: {name} is not a numeric array (dtype object)")
    # safetensors copies raw memory: every array must be C-contiguous (ascontiguousarray
    # would turn 0-d buffers into shape (1,)).
    tensors = {k: np.asarray(v, order="C") for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors.numpy.save(tensors, metadata=metadata))


def _cnnkit_version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------------- loading
def _looks_like(data: bytes) -> str:
    if data.startswith(b"PK\x03\x04") or data[:1] == b"\x80":
        return " It looks like a PyTorch .pth file: read it with cnnkit.io.load_torch."
    return ""


def require_file(path: str | os.PathLike, what: str) -> str:
    """``path`` as a string when it is an existing file; else a one-line error saying whether
    it is missing or a folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path} is a folder, expected a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    return path


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Validate and read a safetensors file: (tensors in file order, metadata)."""
    require_file(path, "checkpoint")
    with open(path, "rb") as f:
        data = f.read()
    prefix = f"{path} is not a valid safetensors checkpoint:"
    if len(data) < 8:
        raise CheckpointError(f"{prefix} only {len(data)} bytes, too short for a header.{_looks_like(data)}")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise CheckpointError(
            f"{prefix} the header length field says {n} bytes but only {len(data) - 8} follow "
            f"(truncated or not a safetensors file).{_looks_like(data)}"
        )
    try:
        header = json.loads(data[8:8 + n])
    except RecursionError:
        raise CheckpointError(f"{prefix} the header is nested too deeply to be a safetensors header") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{prefix} the header is not valid JSON ({exc}); the file is corrupt or was "
                              f"tampered with.{_looks_like(data)}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{prefix} the header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", None) or {}
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"{prefix} malformed tensor entry in the header ({exc!r})") from exc
    if 8 + n + end != len(data):
        raise CheckpointError(
            f"{prefix} the header describes {end} bytes of tensor data but the file holds {len(data) - 8 - n} "
            "(truncated or tampered with)"
        )
    try:
        tensors = safetensors.numpy.load(data)
    except (safetensors.SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{prefix} {exc}") from exc
    order = {name: i for i, name in enumerate(header)}
    tensors = {k: tensors[k] for k in sorted(tensors, key=lambda k: order.get(k, len(order)))}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{prefix} __metadata__ must map strings to strings")
    return tensors, metadata


def _json_field(metadata: dict[str, str], key: str, path: str) -> Any:
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except RecursionError:
        raise CheckpointError(f"{path}: metadata field {key!r} is nested too deeply (the file is corrupt or was "
                              "tampered with)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON ({exc}); the file is corrupt "
                              "or was tampered with") from exc


def _typed_field(metadata: dict[str, str], key: str, path: str, kind: type, expected: str) -> Any:
    """A JSON metadata field that must be ``kind`` (or absent / null)."""
    value = _json_field(metadata, key, path)
    if value is not None and not isinstance(value, kind):
        raise CheckpointError(f"{path}: metadata field {key!r} must be {expected}, found a JSON "
                              f"{_json_type(value)}; the file is corrupt or was tampered with")
    return value


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_config(config: dict | None, path: str) -> dict | None:
    if config is None:
        return None
    if not isinstance(config.get("name"), str) or not isinstance(config.get("kwargs") or {}, dict):
        raise CheckpointError(f"{path}: metadata field 'config' must be {{\"name\": string, \"kwargs\": object}}, "
                              f"found {json.dumps(config)[:200]}")
    return config


def check_meta(meta: dict, path: str) -> dict:
    """Validate the fields of a checkpoint's ``meta`` that cnnkit itself uses (``epoch``,
    ``classes``, ``input_shape``, ``normalize``); other fields are the user's and pass as they are.

    Raises:
        CheckpointError: one line naming the file, the field, what was expected and what was found.
    """
    from .limits import MAX_CLASSES, check_input_shape

    def bad(field: str, expected: str, found: Any) -> CheckpointError:
        return CheckpointError(f"{path}: meta[{field!r}] must be {expected}, found {json.dumps(found)[:200]}")

    epoch = meta.get("epoch")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise bad("epoch", "an integer >= 0", epoch)
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not 0 < len(classes) <= MAX_CLASSES
                                or not all(isinstance(c, str) for c in classes)):
        raise bad("classes", f"a list of 1 to {MAX_CLASSES} strings", classes)
    shape = meta.get("input_shape")
    if shape is not None:
        try:
            check_input_shape(shape, f"{path}: meta['input_shape']")
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    norm = meta.get("normalize")
    if norm is not None:
        if not isinstance(norm, dict):
            raise bad("normalize", '{"mean": [...], "std": [...]}', norm)
        for key in ("mean", "std"):
            values = norm.get(key)
            values = [values] if isinstance(values, (int, float)) and not isinstance(values, bool) else values
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
                raise bad(f"normalize.{key}", "a non-empty list of finite numbers", norm.get(key))
            if key == "std" and min(values) <= 0:
                raise bad("normalize.std", "positive numbers (each channel is divided by its std)", norm.get(key))
    return meta


def _writable(arr: np.ndarray) -> np.ndarray:
    return arr if arr.flags.writeable else arr.copy()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read every part of a checkpoint written by :func:`save`.

    A plain safetensors file (weights only, e.g. from another library) is accepted too: all
    its tensors become ``state_dict`` and the other fields are empty.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        Checkpoint: state_dict, config, optimizer_state, scheduler_state, meta, extra.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated, tampered, not safetensors, or written by a newer format.
    """
    path = os.fspath(path)
    tensors, metadata = _read_safetensors(path)
    if metadata.get("format") != FORMAT:
        return Checkpoint(state_dict={k: _writable(v) for k, v in tensors.items()})
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad format_version {metadata.get('format_version')!r}") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this cnnkit "
                              f"supports ({FORMAT_VERSION}); upgrade cnnkit")
    groups: dict[str, dict[str, np.ndarray]] = {"model": {}, "optimizer": {}, "extra": {}}
    for name, arr in tensors.items():
        group, _, key = name.partition(".")
        if group not in groups or not key:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} in a cnnkit checkpoint")
        groups[group][key] = _writable(arr)
    keys = _typed_field(metadata, "model_keys", path, list, "a list of strings") or []
    model_sd = {k: groups["model"][k] for k in keys if isinstance(k, str) and k in groups["model"]}
    model_sd.update(groups["model"])  # anything not listed keeps file order, after the listed keys
    return Checkpoint(
        state_dict=model_sd,
        config=_check_config(_typed_field(metadata, "config", path, dict, "an object"), path),
        optimizer_state=_optimizer_state(_typed_field(metadata, "optimizer", path, dict, "an object"),
                                         groups["optimizer"], path),
        scheduler_state=_typed_field(metadata, "scheduler", path, dict, "an object"),
        meta=check_meta(_typed_field(metadata, "meta", path, dict, "an object") or {}, path),
        extra=groups["extra"],
        cnnkit_version=metadata.get("cnnkit_version"),
    )


def _optimizer_state(plain: dict | None, arrays: dict[str, np.ndarray], path: str) -> dict | None:
    if plain is None:
        if arrays:
            raise CheckpointError(f"{path}: optimizer arrays without optimizer metadata")
        return None
    try:
        state = {int(i): dict(slots) for i, slots in plain["state"].items()}
        for key, arr in arrays.items():
            index, _, name = key.partition(".")
            state.setdefault(int(index), {})[name] = arr
        groups = plain["param_groups"]
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise TypeError(f"param_groups must be a list of objects, found {_json_type(groups)}")
        return {"state": dict(sorted(state.items())), "param_groups": groups}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed optimizer state ({exc!r})") from exc


def _is_torch_name(path) -> bool:
    return os.fspath(path).lower().endswith((".pt", ".pth"))


def load(path: str | os.PathLike, model: Any = None, strict: bool = True, weights_only: bool = True,
         map_location: Any = None) -> Any:
    """Load a checkpoint into a model and return the model; or, as ``torch.load``, return
    the state dict a file holds.

    Args:
        path: a ``.safetensors`` file written by :func:`save`, or a PyTorch ``.pt`` / ``.pth``
            state dict (read without running code: ``io.load_torch``).
        model: the module to fill in. When None, the model is rebuilt from the architecture
            config stored in the file (``cnnkit.models.create(name, **kwargs)``); a file
            without one (a bare state dict) is returned as an ordered dict of Tensors,
            for ``model.load_state_dict(cnnkit.load(path))``.
        strict: passed to ``load_state_dict``: missing or unexpected keys are an error.
        weights_only, map_location: accepted for PyTorch compatibility; loading never runs
            code, and everything is on the CPU.

    Returns:
        The model with the checkpoint's weights, and the checkpoint's meta dict attached as
        ``model.checkpoint_meta``; or the state dict (see ``model``).

    Raises:
        CheckpointError: keys or shapes that do not match the model; an unreadable file.
    """
    path = os.fspath(path)
    if _is_torch_name(path):
        from .._tensor import Tensor
        from .torch_reader import load_torch

        state = OrderedDict((k, Tensor._wrap(v)) for k, v in load_torch(path).items())
        if model is None:
            return state
        try:
            model.load_state_dict(state, strict=strict)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: the weights do not fit the model: {exc}") from exc
        return model
    ckpt = load_checkpoint(path)
    if model is None:
        if not ckpt.config or "name" not in ckpt.config:
            from .._tensor import Tensor

            return OrderedDict((k, Tensor._wrap(v)) for k, v in ckpt.state_dict.items())
        model = _rebuild(ckpt, path)
    try:
        model.load_state_dict(ckpt.state_dict, strict=strict)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: the weights do not fit the model: {exc}") from exc
    model.checkpoint_meta = ckpt.meta
    return model


def _rebuild(ckpt: Checkpoint, path: str) -> Any:
    """``cnnkit.models.create`` from the stored config, once its sizes are known to be sane.

    The config is text in the file: ``num_classes = 10**9`` would build a model of gigabytes
    before the weights are even compared. Every integer setting (and the sum of an integer
    list, e.g. ResNet's blocks per stage) must therefore be at most the largest dimension of
    the weights the file actually stores -- a class count, a channel count, a width or a depth
    never exceeds the widest tensor of a real model of that architecture.
    """
    name, kwargs = ckpt.config["name"], dict(ckpt.config.get("kwargs") or {})
    largest = max((max(a.shape, default=1) for a in ckpt.state_dict.values()), default=0)
    for key, value in kwargs.items():
        ints = [value] if isinstance(value, int) and not isinstance(value, bool) else \
            value if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
            else None
        if ints is not None and sum(abs(v) for v in ints) > largest:
            raise CheckpointError(
                f"{path}: the architecture config asks for {key}={value}, larger than any dimension of the weights "
                f"the file holds (largest {largest}); the file is corrupt or was tampered with")
    models = import_module("cnnkit.models")
    try:
        return models.create(name, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CheckpointError(f"{path}: cannot rebuild the model from its config {json.dumps(ckpt.config)[:200]}: "
                              f"{message}") from None
