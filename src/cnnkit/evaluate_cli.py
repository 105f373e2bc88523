"""``cnnkit evaluate``: a checkpoint's test metrics on a built-in dataset or an image folder,
printed (per-class table, confusion matrix) and saved (JSON, text, PNG).

What is evaluated, first match wins:

1. ``--data DIR``: every image of the folder ``DIR/<class>/<images>``;
2. ``--dataset NAME``: the test split of a built-in dataset;
3. the data recorded in the checkpoint: a ``cnnkit finetune`` run's image folder (only the images
   the fine-tune held out, with its own split), or a ``cnnkit train`` run's dataset.

The files go into ``--out`` (default: ``eval-<data>-<checkpoint>`` next to the checkpoint, i.e.
inside the run folder) and are never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPORT, MATRIX_TEXT, MATRIX_PNG = "evaluation.json", "confusion_matrix.txt", "confusion_matrix.png"
OUTPUT_FILES = (REPORT, MATRIX_TEXT, MATRIX_PNG)
# Wider matrices are saved but not printed: a terminal line cannot hold them.
MAX_PRINTED_CLASSES = 20


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``cnnkit evaluate TARGET [--dataset NAME | --data DIR] [--out DIR] ...``."""
    from .cli import add_data_root

    p = sub.add_parser(
        "evaluate", help="test metrics and confusion matrix of a checkpoint or run folder (printed and saved)",
        description="Evaluate a checkpoint: loss, accuracy, per-class precision / recall / F1 and the "
                    "confusion matrix, printed and saved as evaluation.json, confusion_matrix.txt and "
                    "confusion_matrix.png. Data: --data DIR (an image folder), else --dataset NAME, else "
                    "what the checkpoint records (a fine-tune's held-out images, a train run's test set).")
    p.add_argument("target", metavar="TARGET",
                   help="a .safetensors checkpoint, or a `cnnkit train` / `cnnkit finetune` output folder "
                        "(its best checkpoint)")
    p.add_argument("--dataset", help="a built-in dataset's test split (fashion-mnist, mnist, cifar10); "
                                     "default: the data recorded in the checkpoint")
    p.add_argument("--data", metavar="DIR", help="an image folder DIR/<class>/<images> to evaluate on "
                                                 "(class names as the model's)")
    p.add_argument("--limit-test", type=int, metavar="N",
                   help="evaluate on a random subset of N test images (built-in datasets; default: the "
                        "run's own --limit-test, so the run's test accuracy is reproduced)")
    p.add_argument("--out", metavar="DIR", help="where to save the results (default: eval-<data>-<checkpoint> "
                                                "in the checkpoint's folder)")
    p.add_argument("--overwrite", action="store_true", help="replace results already saved in the output folder")
    add_data_root(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """The ``evaluate`` subcommand; returns the exit code."""
    evaluate_target(args.target, dataset=args.dataset, data=args.data, limit_test=args.limit_test,
                    data_root=args.data_root, out=args.out, overwrite=args.overwrite)
    return 0


def checkpoint_of(target: str | os.PathLike) -> Path:
    """The checkpoint a TARGET names: the file itself, or a run folder's best (else last) one."""
    path = Path(target)
    if path.is_dir():
        found = [c for c in (path / "best.safetensors", path / "last.safetensors") if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no checkpoint (best.safetensors or last.safetensors)")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint or run folder: {path}")
    return path


def _output_folder(ckpt: Path, data_name: str, out: str | os.PathLike | None, overwrite: bool) -> Path:
    folder = Path(out) if out else ckpt.parent / f"eval-{data_name}-{ckpt.stem}"
    existing = [f for f in OUTPUT_FILES if (folder / f).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds an evaluation ({', '.join(existing)}); pass --overwrite "
                              "to replace it, or --out DIR for another folder")
    return folder


def evaluate_target(target, dataset: str | None = None, data: str | os.PathLike | None = None,
                    limit_test: int | None = None, data_root=None, out=None, overwrite: bool = False,
                    print_fn: Callable[[str], Any] = print) -> dict:
    """Evaluate a checkpoint (see the module docstring for which data), print and save the report.

    Returns:
        The report written to ``evaluation.json``: ``checkpoint``, ``data``, ``num_samples``,
        ``accuracy``, ``loss``, ``classes``, ``per_class``, ``macro_*``, ``confusion_matrix``
        (rows: true class, columns: predicted).
    """
    from .io.checkpoint import load

    ckpt = checkpoint_of(target)
    model = load(ckpt)
    meta = getattr(model, "checkpoint_meta", None) or {}
    if data is not None or (dataset is None and meta.get("data_dir")):
        folder = Path(data if data is not None else meta["data_dir"])
        held_out = None
        if data is None:
            settings = meta.get("finetune") or {}
            held_out = (float(settings.get("val_fraction", 0.2)), int(settings.get("seed", 0)))
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist"
                                    + ("" if data is not None else f" (recorded in {ckpt}); pass --data DIR"))
        out_dir = _output_folder(ckpt, folder.name, out, overwrite)
        report = _evaluate_folder(model, meta, folder, held_out)
        what = (f"the {report['num_samples']} images of {folder} the fine-tune held out" if held_out
                else f"{folder} ({report['num_samples']} images)")
    else:
        name = _dataset_name(ckpt, dataset, meta)
        out_dir = _output_folder(ckpt, name, out, overwrite)
        report = _evaluate_dataset(model, meta, name, limit_test, data_root)
        what = f"{name} test ({report['num_samples']} images)"
    report = {"checkpoint": str(ckpt), "data": what, **report}
    _print_report(report, print_fn)
    _save(report, out_dir)
    print_fn(f"wrote {out_dir}: {', '.join(OUTPUT_FILES)}")
    print_fn(f"{ckpt} on {what}: accuracy {100 * report['accuracy']:.2f}%, loss {report['loss']:.4f}")
    return report


def _dataset_name(ckpt: Path, dataset: str | None, meta: dict) -> str:
    from . import presets

    name = dataset or meta.get("dataset")
    if not name:
        raise ValueError(f"{ckpt} does not record its dataset; pass --dataset "
                         f"({', '.join(presets.DATASETS)}) or --data DIR (an image folder)")
    try:
        return presets.dataset_info(name)[0]
    except ValueError:
        if dataset is not None:
            raise
        raise ValueError(f"{ckpt} was trained on {name!r}, which is not a built-in dataset, and does not "
                         "record where its images are; pass --data DIR (the image folder) or --dataset NAME "
                         f"({', '.join(presets.DATASETS)})") from None


def _evaluate_dataset(model, meta: dict, name: str, limit_test, data_root) -> dict:
    from . import nn, presets
    from .data import DataLoader
    from .data.transforms import Normalize
    from .runner import _subset
    from .train import evaluate

    _, info = presets.dataset_info(name)
    run = meta.get("run") or {}
    seed = 0
    if run.get("dataset") == name:
        # The run's own test images (its --limit-test subset): the accuracy it printed.
        seed = int(run.get("seed") or 0)
        limit_test = run.get("limit_test") if limit_test is None else limit_test
    test = _subset(info.load(False, data_root), limit_test, seed, 2)
    classes = list(meta.get("classes") or getattr(test, "classes", []))
    shape = meta.get("input_shape")
    x0, _ = test.get_batch([0]) if hasattr(test, "get_batch") else (test[0][0][None], None)
    if shape and list(x0.shape[1:]) != list(shape):
        raise ValueError(f"--dataset {name}: its images are {'x'.join(map(str, x0.shape[1:]))} but the model "
                         f"was trained on {'x'.join(map(str, shape))} inputs ({meta.get('dataset', 'its data')})")
    norm = meta.get("normalize") or {"mean": list(info.mean), "std": list(info.std)}
    loader = DataLoader(test, batch_size=256, transform=Normalize(norm["mean"], norm["std"]))
    result = evaluate(model, loader, nn.CrossEntropyLoss(), num_classes=len(classes) or None, progress="test")
    cm = np.asarray(result["confusion_matrix"])
    classes = classes if len(classes) == len(cm) else [str(i) for i in range(len(cm))]
    per_class = {c: {k: result[k][i] for k in ("precision", "recall", "f1", "support")}
                 for i, c in enumerate(classes)}
    return {"num_samples": result["num_samples"], "accuracy": result["accuracy"], "loss": result["loss"],
            "classes": classes, "per_class": per_class,
            **{k: result[k] for k in ("macro_precision", "macro_recall", "macro_f1")},
            "confusion_matrix": cm.tolist()}


def _evaluate_folder(model, meta: dict, folder: Path, held_out) -> dict:
    from .finetune import evaluate_folder

    from .predict import InputMismatchWarning

    model.meta = meta  # the checkpoint's preprocessing and class names
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputMismatchWarning)
        rep = evaluate_folder(model, folder, held_out=held_out)
    unlike = [str(w.message) for w in caught if issubclass(w.category, InputMismatchWarning)]
    for w in caught:
        if not issubclass(w.category, InputMismatchWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if unlike:  # one line for the lot: a folder of product photos would otherwise flood the screen
        print(f"cnnkit evaluate: warning: {len(unlike)} of {rep['num_samples']} images look unlike the "
              f"training images, e.g. {unlike[0]}", file=sys.stderr)
    keys = ("num_samples", "accuracy", "loss", "per_class", "macro_precision", "macro_recall", "macro_f1",
            "confusion_matrix")
    return {**{k: rep[k] for k in keys[:3]}, "classes": list(rep["per_class"]), **{k: rep[k] for k in keys[3:]}}


def format_confusion_matrix(cm, classes: list[str]) -> str:
    """The matrix as text: one row per true class (named), one column per predicted class
    (numbered, the legend is the row list)."""
    cm = np.asarray(cm, dtype=np.int64)
    width = max(len(c) for c in classes) + 5
    cell = max(len(str(int(cm.max()) if cm.size else 0)), len(str(len(classes) - 1))) + 1
    lines = ["confusion matrix (rows: true class, columns: predicted class by number)",
             " " * width + "".join(f"{j:>{cell}}" for j in range(len(classes)))]
    for i, name in enumerate(classes):
        lines.append(f"{i:>3}  {name:<{width - 5}}" + "".join(f"{int(v):>{cell}}" for v in cm[i]))
    return "\n".join(lines)


def _print_report(report: dict, print_fn) -> None:
    classes = report["classes"]
    width = max(len(c) for c in classes + ["class"])
    print_fn(f"{'class':<{width}}  precision  recall     f1  support")
    for c, m in report["per_class"].items():
        print_fn(f"{c:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {int(m['support']):>7}")
    print_fn(f"{'macro':<{width}}  {report['macro_precision']:9.4f}  {report['macro_recall']:6.4f}  "
             f"{report['macro_f1']:6.4f}  {report['num_samples']:>7}")
    if len(classes) <= MAX_PRINTED_CLASSES:
        print_fn(format_confusion_matrix(report["confusion_matrix"], classes))
    else:
        print_fn(f"confusion matrix: {len(classes)} classes, too wide to print; see {MATRIX_TEXT}")


def _save(report: dict, folder: Path) -> None:
    from . import plots
    from .io.atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / REPORT, json.dumps(report, indent=2) + "\n")
    atomic_write_text(folder / MATRIX_TEXT, format_confusion_matrix(report["confusion_matrix"],
                                                                    report["classes"]) + "\n")
    plots.plot_confusion_matrix(np.asarray(report["confusion_matrix"]), report["classes"], folder / MATRIX_PNG)
