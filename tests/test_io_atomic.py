"""Atomic writes: a failed save leaves the old file intact and no temporary file behind."""

import os

import pytest

from cnnkit.io import atomic
from cnnkit.io.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def _listing(folder):
    return sorted(os.listdir(folder))


def test_write_creates_and_replaces(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_text(target, "second é")
    assert target.read_text(encoding="utf-8") == "second é"
    assert _listing(tmp_path) == ["out.bin"]


def test_new_file_gets_default_permissions(tmp_path):
    target = tmp_path / "perm.bin"
    atomic_write_bytes(target, b"x")
    reference = tmp_path / "reference.bin"
    reference.write_bytes(b"x")  # what plain open() gives under the current umask
    assert (target.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777)


def test_exception_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good old data")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"good old data"
    assert _listing(tmp_path) == ["model.bin"]


def test_keyboard_interrupt_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good old data")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"good old data"
    assert _listing(tmp_path) == ["model.bin"]


def test_fsync_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good old data")

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new data that never lands")
    assert target.read_bytes() == b"good old data"
    assert _listing(tmp_path) == ["model.bin"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "x.bin", b"")


def test_target_is_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_write_bytes(tmp_path, b"")
