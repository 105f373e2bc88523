"""CIFAR-10, official binary version (no pickle anywhere).

``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/`` with ``data_batch_1.bin`` ..
``data_batch_5.bin`` (train, 10000 records each), ``test_batch.bin`` and ``batches.meta.txt``
(class names, one per line). A record is 1 label byte + 3072 pixel bytes: the 32x32 red plane,
then green, then blue. In a searched folder the files are taken from, in order:
``<folder>/cifar-10-batches-bin/``, ``<folder>/`` itself, or the archive
``<folder>/cifar-10-binary.tar.gz`` read in memory (members are never extracted to disk).
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .download import download_file
from .errors import DataFormatError
from .resolve import resolve_dataset

ARCHIVE = "cifar-10-binary.tar.gz"
SUBDIR = "cifar-10-batches-bin"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on the CIFAR page
TRAIN_FILES = [f"data_batch_{k}.bin" for k in range(1, 6)]
TEST_FILES = ["test_batch.bin"]
META_FILE = "batches.meta.txt"
RECORD = 1 + 3 * 32 * 32
# Documented limits: a batch file holds at most the whole dataset (60000 records; the official
# files hold 10000), the class-name file at most 64 KiB. A tar header (long names, pax records)
# may take at most 1 MiB: no archive member is decompressed past these sizes.
MAX_BATCH_BYTES = 60000 * RECORD
MAX_META_BYTES = 64 << 10
MAX_TAR_HEADER_READ = 1 << 20
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def parse_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's bytes -> ``(images uint8 (n, 32, 32, 3), labels int64 (n,))``."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise DataFormatError(f"{name}: size {len(raw)} bytes is not a positive multiple of the "
                              f"{RECORD}-byte CIFAR-10 record (1 label byte + 3072 pixel bytes)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        raise DataFormatError(f"{name}: label {int(labels.max())} out of range 0..9")
    # Planes R, G, B of 32x32 -> HWC, the layout of torchvision's CIFAR10.data.
    images = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _extracted_dir(folder: Path, files: list[str]) -> Path | None:
    for candidate in (folder / SUBDIR, folder):
        if all((candidate / f).is_file() for f in files):
            return candidate
    return None


def _member_limit(base: str) -> int:
    return MAX_META_BYTES if base == META_FILE else MAX_BATCH_BYTES


class _BoundedReads:
    """A file object for ``tarfile`` whose reads may not ask for more than ``cap`` bytes:
    tarfile reads a long-name or pax header of the size its header declares in one call, and
    a 1.5 MB archive could declare gigabytes. Member data is read with ``cap`` raised to the
    member's size, after that size was checked."""

    def __init__(self, f, name: str):
        self._f, self._name, self.cap = f, name, MAX_TAR_HEADER_READ

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.cap:
            raise DataFormatError(f"{self._name}: a tar header asks to read {n} bytes at once, more than the "
                                  f"{self.cap} allowed (corrupt or hostile archive)")
        return self._f.read(n)

    def __getattr__(self, attr):  # seek, tell, close ...
        return getattr(self._f, attr)


def _read_archive(archive: Path, files: list[str]) -> dict[str, bytes]:
    """The wanted members (matched by base name) of the archive, read in memory."""
    wanted = set(files) | {META_FILE}
    found: dict[str, bytes] = {}
    try:
        with gzip.open(archive, "rb") as gz:
            bounded = _BoundedReads(gz, archive.name)
            with tarfile.open(fileobj=bounded, mode="r:") as tf:
                for member in tf:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and base not in found:
                        if member.size > _member_limit(base):
                            raise DataFormatError(
                                f"{archive.name}: member {member.name} declares {member.size} bytes, more than "
                                f"the {_member_limit(base)} a CIFAR-10 {'class-name' if base == META_FILE else 'batch'} "
                                "file can hold")
                        bounded.cap = max(member.size, MAX_TAR_HEADER_READ)
                        try:
                            found[base] = tf.extractfile(member).read()
                        finally:
                            bounded.cap = MAX_TAR_HEADER_READ
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise DataFormatError(f"{archive.name}: not a readable tar.gz archive "
                              f"({type(e).__name__}: {e})") from None
    missing = [f for f in files if f not in found]
    if missing:
        raise DataFormatError(f"{archive.name}: members {missing} missing (expected "
                              f"{SUBDIR}/{{{', '.join(files)}}})")
    return found


def _read_file(path: Path) -> bytes:
    size = path.stat().st_size
    if size > _member_limit(path.name):
        raise DataFormatError(f"{path}: {size} bytes, more than the {_member_limit(path.name)} a CIFAR-10 "
                              f"{'class-name' if path.name == META_FILE else 'batch'} file can hold")
    return path.read_bytes()


class CIFAR10(Dataset):
    """CIFAR-10: 32x32 colour images, 10 classes, from the official binary files.

    Args:
        root: folder to look in first (``root/cifar-10`` or ``root`` itself).
        train: the 50000-image training split, else the 10000-image test split.
        download: fetch ``cifar-10-binary.tar.gz`` (MD5-checked) into ``~/.cache/cnnkit/cifar-10``.
        transform: optional batch transform.

    Attributes:
        data: uint8 ``(N, 32, 32, 3)`` (HWC, like torchvision); targets: int64 ``(N,)``;
        classes: from ``batches.meta.txt`` (the standard 10 names if it is absent); root.

    Shape:
        ``ds[i]`` -> ``(x float32 (3, 32, 32) in [0, 1], label int)``.
    """

    NAME = "cifar-10"
    TITLE = "CIFAR-10"

    def __init__(self, root=None, train: bool = True, download: bool = True, transform=None):
        self.train = bool(train)
        self.split = "train" if self.train else "test"
        files = TRAIN_FILES if self.train else TEST_FILES
        self.root = resolve_dataset(
            self.NAME, f"{self.TITLE} ({self.split} split)",
            lambda folder: self.is_complete(folder, self.train), root=root, download=download,
            download_into=lambda folder: download_file(URL, folder / ARCHIVE, md5=MD5),
            urls=[URL], needed=[f"{SUBDIR}/{', '.join(files)} or {ARCHIVE}"])
        extracted = _extracted_dir(self.root, files)
        if extracted is not None:
            blobs = {f: _read_file(extracted / f) for f in files}
            meta = extracted / META_FILE
            if meta.is_file():
                blobs[META_FILE] = _read_file(meta)
        else:
            blobs = _read_archive(self.root / ARCHIVE, files)
        parts = [parse_batch(blobs[f], f) for f in files]
        self.data: np.ndarray = np.concatenate([p[0] for p in parts])
        self.targets: np.ndarray = np.concatenate([p[1] for p in parts])
        self.classes = self._class_names(blobs.get(META_FILE))
        self.name = self.NAME
        self.transform = transform

    @staticmethod
    def _class_names(meta: bytes | None) -> list[str]:
        if meta is None:
            return list(CLASSES)
        names = [line.strip() for line in meta.decode("utf-8", "replace").splitlines() if line.strip()]
        if len(names) != len(CLASSES):
            raise DataFormatError(f"{META_FILE}: expected {len(CLASSES)} class names, found {len(names)}")
        return names

    @classmethod
    def is_complete(cls, folder: Path, train: bool) -> bool:
        """True when ``folder`` holds the split's batch files or the archive."""
        files = TRAIN_FILES if train else TEST_FILES
        return _extracted_dir(folder, files) is not None or (folder / ARCHIVE).is_file()
