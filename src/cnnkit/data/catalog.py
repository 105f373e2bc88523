"""What built-in datasets are available where: the data behind ``cnnkit datasets``."""

from __future__ import annotations

import os

from .cifar import CIFAR10
from .locate import cache_dir, describe_places, locate
from .mnist import MNIST, FashionMNIST

BUILTIN = {cls.NAME: cls for cls in (FashionMNIST, MNIST, CIFAR10)}


def find_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """For each built-in dataset and split, the folder it would be loaded from (no files are read).

    Args:
        root: an extra folder to search first, as the ``root`` argument of the datasets does.

    Returns:
        one dict per (dataset, split): ``{"name", "title", "split", "path" (str or None),
        "searched" (list of [label, folder or None]), "download_to" (str)}``.
    """
    rows = []
    for name, cls in BUILTIN.items():
        for train in (True, False):
            folder, places = locate(name, lambda f, c=cls, t=train: c.is_complete(f, t), root)
            rows.append({
                "name": name, "title": cls.TITLE, "split": "train" if train else "test",
                "path": None if folder is None else str(folder),
                "searched": [[label, None if p is None else str(p)] for label, p in places],
                "download_to": str(cache_dir(name)),
            })
    return rows


def datasets_report(root: str | os.PathLike | None = None) -> str:
    """``find_datasets()`` as the text of ``cnnkit datasets``, in the command's words: datasets
    by the names ``cnnkit train --dataset`` takes, ``--data-root`` for the extra folder."""
    from ..presets import dataset_info

    rows = find_datasets(root)
    lines = []
    for r in rows:
        where = r["path"] or f"not found (cnnkit train / evaluate download it into {r['download_to']})"
        lines.append(f"{dataset_info(r['name'])[0]:<14} {r['split']:<5}  {where}")
    lines.append("Searched, in order (first complete folder wins):")
    for name in BUILTIN:
        _, places = locate(name, lambda f: False, root)
        lines.append(f" {dataset_info(name)[0]}:")
        lines.append(describe_places(places, cli=True))
    return "\n".join(lines)
