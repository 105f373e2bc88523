"""Top-k predictions with class names, for zoo models and saved checkpoints.

``predict(model, images, topk=5)`` preprocesses the images the way the model was trained:

- ``meta["preprocess"] == "efficientnet"``: shorter side to 256 (bicubic), centre crop 224,
  ``(pixel - 127) / 128`` (``cnnkit.models.imagenet.efficientnet_preprocess``);
- otherwise ``meta["input_shape"] = [C, H, W]`` (+ optional ``meta["normalize"] = {"mean": [...],
  "std": [...]}``): resize to H x W, greyscale when C == 1 (RGB when C == 3), scale to [0, 1],
  normalise per channel. Fashion-MNIST models expect white garments on a black background:
  when ``meta["input_stats"]`` (kept by ``cnnkit train``) says an image's background or mean
  intensity is far from the training images', an :class:`InputMismatchWarning` suggests
  ``invert=True`` (``--invert``), which predicts on the image's negative.

The metadata comes from ``predict(..., meta=...)``, else ``model.meta`` (set by
``load_predictor``) or ``model.checkpoint_meta`` (set by ``cnnkit.load``), else the zoo defaults of the model's name
(``efficientnet_lite0`` with 1000 classes: ImageNet preprocessing and class names).

``cnnkit predict MODEL IMAGE... [--topk 5] [--invert]``: MODEL is a zoo name (``efficientnet_lite0`` is
loaded with its pretrained ImageNet weights), a ``.safetensors`` checkpoint, or a run /
fine-tune output folder (its best checkpoint is used).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

from .models.imagenet import as_pil_image, efficientnet_batch, imagenet_class_names
from .nn import _kernels as F
from .nn.module import Module

Prediction = list[tuple[str, float]]

# Zoo models that come with pretrained weights, and how their inputs are prepared.
PRETRAINED_ZOO = {"efficientnet_lite0": {"preprocess": "efficientnet", "input_shape": [3, 224, 224],
                                         "dataset": "imagenet"}}


# ---------------------------------------------------------------------------- preprocessing
def _check_input_shape(meta: dict) -> tuple[int, int, int]:
    shape = meta["input_shape"]
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"predict: meta['input_shape'] must be [C, H, W] with C 1 or 3, got {shape}")
    return tuple(int(v) for v in shape)


def _resize(images: Sequence[Any], meta: dict) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1]: resized to meta's H x W, greyscale when C == 1."""
    c, h, w = _check_input_shape(meta)
    out = np.empty((len(images), c, h, w), dtype=np.float32)
    for i, im in enumerate(images):
        pil = as_pil_image(im, name=f"images[{i}]").convert("L" if c == 1 else "RGB")
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.BILINEAR)
        arr = np.asarray(pil, dtype=np.float32) / np.float32(255.0)
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


def _normalize(x: np.ndarray, meta: dict) -> np.ndarray:
    c = x.shape[1]
    norm = meta.get("normalize") or {}
    mean = np.asarray(norm.get("mean", [0.0]), dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(norm.get("std", [1.0]), dtype=np.float32).reshape(-1, 1, 1)
    if mean.shape[0] not in (1, c) or std.shape[0] not in (1, c):
        raise ValueError(f"predict: meta['normalize'] needs 1 or {c} values for mean and std, got {norm}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"predict: meta['normalize'] needs finite means and positive stds, got {norm}")
    return (x - mean) / std


def _inverted(images: Sequence[Any]) -> list[Image.Image]:
    """Negatives of the images (dark on light <-> light on dark), as RGB PIL images."""
    return [ImageOps.invert(as_pil_image(im, name=f"images[{i}]").convert("RGB")) for i, im in enumerate(images)]


def preprocess(images: Sequence[Any], meta: dict, invert: bool = False) -> np.ndarray:
    """A float32 (N, C, H, W) batch from paths / PIL images / arrays, as ``meta`` says
    (``invert``: use the images' negatives)."""
    if invert:
        images = _inverted(images)
    if meta.get("preprocess") == "efficientnet":
        return efficientnet_batch(images)
    _check_preprocess(meta)
    return _normalize(_resize(images, meta), meta)


def _check_preprocess(meta: dict) -> None:
    if meta.get("preprocess") not in (None, "resize"):
        raise ValueError(f"predict: unknown preprocessing {meta['preprocess']!r} in the checkpoint's meta "
                         "(known: 'efficientnet', or input_shape + normalize)")
    if "input_shape" not in meta:
        raise ValueError("predict: the model's meta has neither 'preprocess' nor 'input_shape'; "
                         "cannot tell how to prepare images (pass meta={'input_shape': [C, H, W], "
                         "'normalize': {'mean': [...], 'std': [...]}})")


# ---------------------------------------------------------------------------- input statistics
class InputMismatchWarning(UserWarning):
    """An image looks unlike the model's training images (e.g. dark on light where the model
    learned light on dark); the prediction may be meaningless."""


# Statistics kept of the training images: a model trained on light items on black (Fashion-MNIST)
# sees a product photo (dark item on white) as something else entirely, and the background
# shows it: the border of the image is its background.
def image_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``mean`` intensity and ``border`` intensity (mean of the outer frame, 1/14 of
    the side wide: 2 pixels at 28x28) of a (N, C, H, W) batch in [0, 1]; float64 (N,) arrays."""
    x = np.asarray(x)
    n, _, h, w = x.shape
    b = max(1, round(min(h, w) / 14))
    frame = np.ones((h, w), dtype=bool)
    frame[b:h - b, b:w - b] = False
    return {"mean": x.mean(axis=(1, 2, 3), dtype=np.float64),
            "border": x[:, :, frame].mean(axis=(1, 2), dtype=np.float64)}


def input_statistics(x: np.ndarray) -> dict[str, list[float]]:
    """``{"mean": [average, std], "border": [average, std]}`` of ``image_statistics`` over a
    sample of training images in [0, 1] (JSON-able, for a checkpoint's metadata)."""
    stats = image_statistics(x)
    return {k: [float(v.mean()), float(v.std())] for k, v in stats.items()}


# A value counts as far from the training images' when it is this many standard deviations
# away, and at least the absolute gap (intensities in [0, 1]): Fashion-MNIST's borders are all
# near 0 with a tiny spread, and a dark photo's background must not count as "far".
FAR_SIGMAS, FAR_GAP = 4.0, 0.3


def input_mismatches(x01: np.ndarray, meta: dict, names: Sequence[str]) -> list[str]:
    """One message per image whose statistics are far from the training images' (``meta``'s
    ``input_stats``); empty when the metadata has none."""
    reference = meta.get("input_stats")
    if not reference:
        return []
    stats = image_statistics(x01)
    out = []
    for i, name in enumerate(names):
        far = []
        for key, label in (("border", "background (border)"), ("mean", "mean intensity")):
            avg, sd = reference[key]
            value = stats[key][i]
            if abs(value - avg) > max(FAR_SIGMAS * sd, FAR_GAP):
                far.append(f"{label} {value:.2f} vs {avg:.2f} +- {sd:.2f}")
        if far:
            hint = ("the model was trained on light items on a dark background; try --invert"
                    if stats["border"][i] > reference["border"][0] else
                    "the model was trained on dark items on a light background; try --invert")
            out.append(f"{name} looks unlike the training images ({'; '.join(far)}): {hint}")
    return out


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
                  batch_size: int = 16, invert: bool = False) -> np.ndarray:
    """Class probabilities, float32 (N, num_classes), the model in eval mode.

    ``invert``: predict on the images' negatives. An image whose statistics are far from the
    training images' (``meta["input_stats"]``) raises an :class:`InputMismatchWarning`.
    """
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
            chunk = images[i:i + batch_size]
            if meta.get("input_stats") and meta.get("preprocess") in (None, "resize"):
                _check_preprocess(meta)
                x01 = _resize(_inverted(chunk) if invert else chunk, meta)
                names = [os.fspath(im) if isinstance(im, (str, os.PathLike)) else f"images[{i + j}]"
                         for j, im in enumerate(chunk)]
                for message in input_mismatches(x01, meta, names):
                    warnings.warn(message, InputMismatchWarning, stacklevel=2)
                x = _normalize(x01, meta)
            else:
                x = preprocess(chunk, meta, invert=invert)
            probs.append(softmax(np.asarray(model(x), dtype=np.float32)))
    finally:
        model.train(was_training)
    return np.concatenate(probs)


def predict(model: Module | str, images: Any, topk: int = 5, meta: dict | None = None,
            batch_size: int = 16, invert: bool = False) -> list[Prediction]:
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
        invert: predict on the images' negatives (e.g. a dark item photographed on white, for
            a model trained on light items on black). Images far from the training images'
            statistics raise an :class:`InputMismatchWarning` suggesting it.

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
    probs = predict_proba(model, images, meta, batch_size, invert=invert)
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
    p.add_argument("model", metavar="MODEL", help="zoo name with pretrained weights, .safetensors checkpoint, "
                                                  "or run / fine-tune folder")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--invert", action="store_true",
                   help="predict on the negatives of the images: for a dark item photographed on a light "
                        "background, with a model trained on light items on black (Fashion-MNIST, MNIST)")
    p.set_defaults(func=run_predict)
    return p


def run_predict(args: argparse.Namespace) -> int:
    """The ``predict`` subcommand; returns the exit code."""
    try:
        model, meta = load_predictor(args.model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputMismatchWarning)
            results = predict(model, args.images, topk=args.topk, meta=meta, batch_size=args.batch_size,
                              invert=args.invert)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError, KeyError) as exc:
        print(f"cnnkit predict: error: {exc}", file=sys.stderr)
        return 2
    for w in caught:  # before the results, which they qualify
        if issubclass(w.category, InputMismatchWarning):
            print(f"cnnkit predict: warning: {w.message}", file=sys.stderr, flush=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    width = max(len(name) for res in results for name, _ in res)
    for path, res in zip(args.images, results):
        print(path)
        for rank, (name, prob) in enumerate(res, 1):
            print(f"  {rank}. {name:<{width}}  {prob:6.2%}")
    return 0
