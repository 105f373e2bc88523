"""Checked, atomic downloads into the cache folder.

A file is fetched into a temporary file in the destination folder, its checksum compared with
the published one, and only then renamed into place (``os.replace``), so an interrupted or
corrupted download never leaves a file that looks complete. The fetcher is a plain function
``fetch(url, fileobj)``; tests replace it (``download_file(..., fetcher=fake)`` or by
monkeypatching ``cnnkit.data.download.fetch``) so they never touch the network.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import DownloadError

CHUNK = 1 << 20
TIMEOUT_S = 60


def fetch(url: str, out: BinaryIO) -> None:
    """Stream ``url`` into ``out`` with urllib, showing a tqdm progress bar."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        name = url.rsplit("/", 1)[-1]
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str | os.PathLike, *, md5: str | None = None,
                  sha256: str | None = None,
                  fetcher: Callable[[str, BinaryIO], None] | None = None) -> Path:
    """Download ``url`` to the file ``dest``, verify it, and move it into place atomically.

    Args:
        url: where to fetch from.
        dest: final file path; its folder is created if needed.
        md5, sha256: the published checksum (sha256 preferred when both are given).
        fetcher: ``fetcher(url, fileobj)``; default this module's ``fetch`` (urllib + tqdm).

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: network failure or checksum mismatch; no partial file is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fetcher = fetcher or fetch  # looked up at call time so tests can monkeypatch `fetch`
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                fetcher(url, out)
            except Exception as e:
                raise DownloadError(f"download of {url} failed: {type(e).__name__}: {e}") from e
        for algorithm, expected in (("sha256", sha256), ("md5", md5)):
            if expected:
                found = file_digest(tmp, algorithm)
                if found != expected.lower():
                    raise DownloadError(f"{dest.name}: {algorithm} mismatch after downloading {url}: "
                                        f"expected {expected}, found {found} (file discarded)")
                break
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
