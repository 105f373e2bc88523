"""Atomic file writes: a save is either complete or did not happen.

The bytes go to a temporary file in the target's own folder (so the final rename never
crosses a file system), are flushed and fsync'ed, then ``os.replace`` swaps the file into
place in one step. If anything fails on the way -- an exception while writing, a full disk,
Ctrl-C -- the temporary file is removed and a file already at the target is left untouched:
an interrupted save never replaces a good checkpoint with half of a new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from typing import BinaryIO, Iterator

# ".<target name>.<12 hex digits>.tmp": the temporary files atomic_open creates.
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def _check_folder(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save {path}: it is a folder, expected a file path")
    return folder


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) everywhere.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing, atomically.

    Yields a binary file object writing to a temporary file next to ``path``; when the
    ``with`` block ends normally the data is fsync'ed and the file renamed onto ``path``.
    When the block raises, the temporary file is deleted, ``path`` is unchanged and the
    exception propagates.

    Example::

        with atomic_open("model.pth") as f:
            f.write(header)
            f.write(payload)
    """
    path = os.fspath(path)
    folder = _check_folder(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never reuse someone else's file; mode 0o666 lets the umask decide, as open() does.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                raise _naming(exc, path) from exc
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _naming(exc, path) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _naming(exc: OSError, path: str) -> OSError:
    """The same kind of OSError, its message naming the file (``No space left on device``
    alone does not say which save failed)."""
    if path in str(exc):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    new = type(exc)(exc.errno, f"cannot write {path}: {reason}") if exc.errno else \
        OSError(f"cannot write {path}: {reason}")
    return new


def remove_stale_temps(folder: str | os.PathLike, older_than: float = 0.0) -> list[str]:
    """Delete the temporary files that interrupted atomic writes left in ``folder``.

    A process killed between writing and renaming (SIGKILL, power loss) cannot clean up
    after itself; its ``.<name>.<12 hex>.tmp`` file stays behind. Call this when the folder is
    yours again (e.g. a resumed run). Only names of that exact pattern are touched.

    Args:
        folder: the folder to clean.
        older_than: only files last modified more than this many seconds ago.

    Returns:
        The paths removed.
    """
    removed = []
    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not _TEMP_NAME.match(name):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if os.path.isfile(path) and now - os.path.getmtime(path) >= older_than:
                os.unlink(path)
                removed.append(path)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    atomic_write_bytes(path, text.encode(encoding))
