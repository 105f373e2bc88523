"""Top-k predictions with class names, for zoo models and saved checkpoints.

``predict(model, images, topk=5)`` preprocesses the images the way the model was trained:

- ``meta["preprocess"] == "efficientnet"``: shorter side to 256 (bicubic), centre crop 224,
  ``(pixel - 127) / 128`` (``cnnkit.models.imagenet.efficientnet_preprocess``);
- otherwise ``meta["input_shape"] = [C, H, W]`` (+ optional ``meta["normalize"] = {"mean": [...],
  "std": [...]}``): resize to H x W, greyscale when C == 1 (RGB when C == 3), scale to [0, 1],
  normalise per channel. Fashion-MNIST models expect white garments on a black background.

The metadata comes from ``predict(..., meta=...)``, else ``model.meta`` (set by
``load_predictor``) or ``model.checkpoint_meta`` (set by ``cnnkit.load``), else the zoo defaults of the model's name
(``efficientnet_lite0`` with 1000 classes: ImageNet preprocessing and class names).

``cnnkit predict MODEL IMAGE... [--topk 5]``: MODEL is a zoo name (``efficientnet_lite0`` is
loaded with its pretrained ImageNet weights), a ``.safetensors`` checkpoint, or a run /
fine-tune output folder (its best checkpoint is used).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .models.imagenet import as_pil_image, efficientnet_batch, imagenet_class_names
from .nn import _kernels as F
from .nn.module import Module

Prediction = list[tuple[str, float]]

# Zoo models that come with pretrained weights, and how their inputs are prepared.
PRETRAINED_ZOO = {"efficientnet_lite0": {"preprocess": "efficientnet", "input_shape": [3, 224, 224],
                                         "dataset": "imagenet"}}


# ---------------------------------------------------------------------------- preprocessing
def _resize_normalize(images: Sequence[Any], meta: dict) -> np.ndarray:
    shape = meta["input_shape"]
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"predict: meta['input_shape'] must be [C, H, W] with C 1 or 3, got {shape}")
    c, h, w = (int(v) for v in shape)
    norm = meta.get("normalize") or {}
    mean = np.asarray(norm.get("mean", [0.0]), dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(norm.get("std", [1.0]), dtype=np.float32).reshape(-1, 1, 1)
    if mean.shape[0] not in (1, c) or std.shape[0] not in (1, c):
        raise ValueError(f"predict: meta['normalize'] needs 1 or {c} values for mean and std, got {norm}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"predict: meta['normalize'] needs finite means and positive stds, got {norm}")
    out = np.empty((len(images), c, h, w), dtype=np.float32)
    for i, im in enumerate(images):
        pil = as_pil_image(im, name=f"images[{i}]").convert("L" if c == 1 else "RGB")
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.BILINEAR)
        arr = np.asarray(pil, dtype=np.float32) / np.float32(255.0)
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return (out - mean) / std


def preprocess(images: Sequence[Any], meta: dict) -> np.ndarray:
    """A float32 (N, C, H, W) batch from paths / PIL images / arrays, as ``meta`` says."""
    if meta.get("preprocess") == "efficientnet":
        return efficientnet_batch(images)
    if meta.get("preprocess") not in (None, "resize"):
        raise ValueError(f"predict: unknown preprocessing {meta['preprocess']!r} in the checkpoint's meta "
                         "(known: 'efficientnet', or input_shape + normalize)")
    if "input_shape" not in meta:
        raise ValueError("predict: the model's meta has neither 'preprocess' nor 'input_shape'; "
                         "cannot tell how to prepare images (pass meta={'input_shape': [C, H, W], "
                         "'normalize': {'mean': [...], 'std': [...]}})")
    return _resize_normalize(images, meta)


# ---------------------------------------------------------------------------- metadata
def zoo_meta(name: str) -> dict:
    """Preprocessing and class names of a zoo model with pretrained weights."""
    meta = dict(PRETRAINED_ZOO[name])
    meta["classes"] = list(imagenet_class_names())
    return meta


def resolve_meta(model: Module, meta: dict | None = None) -> dict:
    """The prediction metadata of ``model``: ``meta``, else ``model.meta``, else zoo defaults."""
    if meta is not None:
        return dict(meta)
    for attr in ("meta", "checkpoint_meta"):  # set by load_predictor / cnnkit.load
        own = getattr(model, attr, None)
        if isinstance(own, dict) and (own.get("preprocess") or own.get("input_shape")):
            return dict(own)
    config = getattr(model, "config", None) or {}
    name = config.get("name")
    if name in PRETRAINED_ZOO and config.get("kwargs", {}).get("num_classes", 1000) == 1000:
        return zoo_meta(name)
    raise ValueError(
        f"predict: no preprocessing information for this {type(model).__name__}; load it with "
        "cnnkit.predict.load_predictor(checkpoint) or pass meta={'input_shape': [C, H, W], "
        "'normalize': {...}, 'classes': [...]} (or {'preprocess': 'efficientnet'})"
    )


# ---------------------------------------------------------------------------- running
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) logits (``cnnkit.nn.functional.softmax`` on axis 1)."""
    return F.softmax(logits, axis=1)


def _is_single_image(images: Any) -> bool:
    # An array is one image when it is (H, W) or (H, W, 3|4); otherwise it is a stack of images.
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (3, 4))
    return False


def predict_proba(model: Module, images: Sequence[Any], meta: dict | None = None,
                  batch_size: int = 16) -> np.ndarray:
    """Class probabilities, float32 (N, num_classes), the model in eval mode."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"predict: --batch-size / batch_size must be an integer >= 1, got {batch_size!r}")
    meta = resolve_meta(model, meta)
    if _is_single_image(images):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("predict: no images given")
    was_training = model.training
    model.eval()
    try:
        probs = []
        for i in range(0, len(images), batch_size):
            x = preprocess(images[i:i + batch_size], meta)
            probs.append(softmax(np.asarray(model(x), dtype=np.float32)))
    finally:
        model.train(was_training)
    return np.concatenate(probs)


def predict(model: Module | str, images: Any, topk: int = 5, meta: dict | None = None,
            batch_size: int = 16) -> list[Prediction]:
    """Top-k classes and probabilities of each image.

    Args:
        model: a ``Module`` (see ``resolve_meta`` for how its preprocessing is found), or a zoo
            name / ``.safetensors`` checkpoint / run folder, loaded with ``load_predictor``.
        images: one image or a list of them: file paths, PIL images, or arrays (H, W) /
            (H, W, 3) that are uint8 or floating in [0, 1]; also a stack (N, H, W) or
            (N, H, W, C) as one array.
        topk: how many classes to return per image (capped at the number of classes).
        meta: preprocessing and class names, overriding the model's own.
        batch_size: images per forward pass.

    Returns:
        one list per image of ``(class_name, probability)``, most probable first. Without
        class names in the metadata the names are ``"class <index>"``.
    """
    if isinstance(model, (str, os.PathLike)):
        model, loaded = load_predictor(model)
        meta = loaded if meta is None else meta
    if int(topk) < 1:
        raise ValueError(f"predict: topk must be >= 1, got {topk}")
    meta = resolve_meta(model, meta)
    probs = predict_proba(model, images, meta, batch_size)
    classes = meta.get("classes") or [f"class {i}" for i in range(probs.shape[1])]
    if len(classes) != probs.shape[1]:
        raise ValueError(f"predict: the model has {probs.shape[1]} outputs but meta['classes'] "
                         f"names {len(classes)} classes")
    k = min(int(topk), probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(str(classes[j]), float(p[j])) for j in row] for p, row in zip(probs, top)]


# ---------------------------------------------------------------------------- loading
def find_best_checkpoint(folder: str | os.PathLike) -> Path:
    """The checkpoint to use in a run / fine-tune folder: ``best.safetensors``, else the
    newest ``*best*.safetensors``, else ``last.safetensors``, else the newest ``.safetensors``."""
    folder = Path(folder)
    candidates = [folder / "best.safetensors"]
    for pattern in ("*best*.safetensors", "**/*best*.safetensors", "last.safetensors",
                    "*.safetensors", "**/*.safetensors"):
        found = sorted((Path(p) for p in glob.glob(str(folder / pattern), recursive=True)),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        candidates += found
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"predict: no .safetensors checkpoint in folder {folder}")


def load_predictor(spec: str | os.PathLike) -> tuple[Module, dict]:
    """A model in eval mode and its prediction metadata from a zoo name, a ``.safetensors``
    checkpoint or a run folder (its best checkpoint). The model also gets ``model.meta``."""
    from .models import names as zoo_names

    spec_str = os.fspath(spec)
    if not os.path.exists(spec_str) and spec_str in PRETRAINED_ZOO:
        from .models import create

        model = create(spec_str, pretrained=True)
        meta = zoo_meta(spec_str)
    elif os.path.isdir(spec_str) or os.path.isfile(spec_str):
        path = find_best_checkpoint(spec_str) if os.path.isdir(spec_str) else Path(spec_str)
        model, meta = _load_checkpoint(path)
    elif spec_str in zoo_names():
        raise ValueError(f"predict: zoo model {spec_str!r} has no pretrained weights (models with weights: "
                         f"{', '.join(PRETRAINED_ZOO)}); pass a trained .safetensors checkpoint or run folder")
    else:
        raise FileNotFoundError(f"predict: {spec_str!r} is neither a zoo model with pretrained weights "
                                f"({', '.join(PRETRAINED_ZOO)}) nor an existing checkpoint file or folder")
    model.eval()
    model.meta = meta
    return model, meta


def _load_checkpoint(path: Path) -> tuple[Module, dict]:
    from .io.checkpoint import load

    model = load(path)  # rebuilt from the zoo config stored in the file
    meta = dict(getattr(model, "checkpoint_meta", None) or {})
    if not meta.get("preprocess") and not meta.get("input_shape"):
        config = getattr(model, "config", None) or {}
        if config.get("name") in PRETRAINED_ZOO and config.get("kwargs", {}).get("num_classes", 1000) == 1000:
            meta = {**zoo_meta(config["name"]), **meta}
    return model, meta


# ---------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cnnkit predict MODEL IMAGE... [--topk 5]``."""
    p = subparsers.add_parser(
        "predict", help="classify images with a pretrained zoo model or a trained checkpoint",
        description="Print the top-k classes of each image. MODEL: a zoo name with pretrained weights "
                    f"({', '.join(PRETRAINED_ZOO)}), a .safetensors checkpoint, or a run / fine-tune folder.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.set_defaults(func=run_predict)
    return p


def run_predict(args: argparse.Namespace) -> int:
    """The ``predict`` subcommand; returns the exit code."""
    try:
        model, meta = load_predictor(args.model)
        results = predict(model, args.images, topk=args.topk, meta=meta, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError, KeyError) as exc:
        print(f"cnnkit predict: error: {exc}", file=sys.stderr)
        return 2
    width = max(len(name) for res in results for name, _ in res)
    for path, res in zip(args.images, results):
        print(path)
        for rank, (name, prob) in enumerate(res, 1):
            print(f"  {rank}. {name:<{width}}  {prob:6.2%}")
    return 0
