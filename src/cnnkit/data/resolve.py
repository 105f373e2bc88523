"""Find a dataset's files, or download them, or fail with one message that says it all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import DatasetNotFoundError, DownloadError
from .locate import cache_dir, describe_places, locate


def find_file(folder: Path, filename: str) -> Path | None:
    """``folder/filename``, or its uncompressed twin (``x.gz`` -> ``x``) if only that exists."""
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def resolve_dataset(name: str, title: str, is_complete: Callable[[Path], bool], *,
                    root: str | os.PathLike | None, download: bool,
                    download_into: Callable[[Path], None], urls: list[str], needed: list[str],
                    hint: str = "") -> Path:
    """The folder holding a complete copy of a dataset split.

    Searches the places of ``cnnkit.data.locate`` in order; if none is complete and ``download``
    is true, calls ``download_into(cache folder)``. Otherwise raises ``DatasetNotFoundError``
    listing every place searched, why the download did not happen, and how to get the data.
    """
    folder, places = locate(name, is_complete, root)
    if folder is not None:
        return folder
    cache = cache_dir(name)
    if download:
        try:
            download_into(cache)
        except DownloadError as e:
            reason = f"failed: {e}"
        else:
            if is_complete(cache):
                return cache
            reason = f"finished but {cache} is still incomplete"
    else:
        reason = f"skipped (download=False); source: {', '.join(urls)}"
    searched = f"{title} not found: looked for {', '.join(needed)} in, in order:\n"
    get = f"To get the data: {hint + ', or ' if hint else ''}put the files in $CNNKIT_DATA/{name} "
    error = DatasetNotFoundError(
        searched + f"{describe_places(places)}\nDownload: {reason}\n" + get
        + f"(or pass root=...), or run with download=True and network access (files are saved to {cache}).")
    # The same facts in the words of the `cnnkit` command, whose commands always download.
    error.cli_message = (searched + f"{describe_places(places, cli=True)}\nDownload: {reason}\n" + get
                         + f"(or pass --data-root DIR), or run again with network access (files are saved "
                         f"to {cache}).")
    raise error
