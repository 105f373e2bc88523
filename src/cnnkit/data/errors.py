"""Errors raised by cnnkit.data: one class per thing a user can get wrong."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file exists but is not what it should be (bad magic, truncated, corrupt gzip...).

    The message always starts with the file name and says what was expected and what was found.
    """


class DatasetNotFoundError(FileNotFoundError):
    """A dataset was not found anywhere cnnkit looks and could not be downloaded.

    The message lists every place that was searched and how to get the data.

    Attributes:
        cli_message (str): the same message in the words of the ``cnnkit`` command
            (``--data-root`` instead of ``root=``), printed by the command.
    """

    cli_message: str | None = None


class DownloadError(OSError):
    """A download failed or its checksum did not match the published one."""
