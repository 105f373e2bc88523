"""Where cnnkit looks for a dataset, in order.

1. the ``root`` argument: ``root/<name>``, then ``root`` itself;
2. ``$CNNKIT_DATA``: ``$CNNKIT_DATA/<name>``, then ``$CNNKIT_DATA`` itself (so one variable can
   point at a folder of datasets or straight at one dataset's files);
3. the download cache ``~/.cache/cnnkit/<name>`` (where downloads are written);
4. the system folder ``/usr/share/datasets/<name>`` (e.g. Debian's ``dataset-fashion-mnist``).

The first folder holding a complete set of the files a split needs wins. Names are
``fashion-mnist``, ``mnist`` and ``cifar-10``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

ENV_VAR = "CNNKIT_DATA"
SYSTEM_DIR = Path("/usr/share/datasets")  # module attribute so tests can point it elsewhere


def cache_dir(name: str) -> Path:
    """``~/.cache/cnnkit/<name>``: where downloads go (HOME is read at call time)."""
    return Path(os.path.expanduser("~")) / ".cache" / "cnnkit" / name


def search_places(name: str, root: str | os.PathLike | None = None) -> list[tuple[str, Path | None]]:
    """Every ``(label, folder)`` searched for dataset ``name``, in order.

    A place that is not configured (no root argument, ``$CNNKIT_DATA`` unset) appears once with
    folder None, so that a "not found" message can say it was considered.
    """
    places: list[tuple[str, Path | None]] = []
    if root is None:
        places.append(("root argument", None))
    else:
        root = Path(root).expanduser()
        places += [("root argument", root / name), ("root argument", root)]
    env = os.environ.get(ENV_VAR)
    if env:
        env_path = Path(env).expanduser()
        places += [(f"${ENV_VAR}", env_path / name), (f"${ENV_VAR}", env_path)]
    else:
        places.append((f"${ENV_VAR}", None))
    places.append(("cache", cache_dir(name)))
    places.append(("system", SYSTEM_DIR / name))
    return places


def locate(name: str, is_complete: Callable[[Path], bool],
           root: str | os.PathLike | None = None) -> tuple[Path | None, list[tuple[str, Path | None]]]:
    """The first searched folder for which ``is_complete(folder)`` is true.

    Returns:
        ``(folder or None, places searched)``.
    """
    places = search_places(name, root)
    for _, folder in places:
        if folder is not None and folder.is_dir() and is_complete(folder):
            return folder, places
    return None, places


def describe_places(places: list[tuple[str, Path | None]], cli: bool = False) -> str:
    """The searched places as indented lines, for error messages and ``cnnkit datasets``
    (``cli``: in the command's words, ``--data-root`` for the root argument)."""
    lines = []
    for label, folder in places:
        if cli and label == "root argument":
            label = "--data-root"
        if folder is None:
            lines.append(f"  - {label}: not set")
        else:
            state = "" if folder.is_dir() else " (no such folder)"
            lines.append(f"  - {label}: {folder}{state}")
    return "\n".join(lines)
