"""PNG plots of a training run: learning curves, confusion matrix, predictions, first-layer filters.

Built on ``matplotlib.figure.Figure`` with the Agg renderer, not ``pyplot``: no global state,
no GUI backend, works on headless machines and never changes the user's backend. Every file is
written atomically (rendered into memory, then ``cnnkit.io.atomic``).
"""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from .io.atomic import atomic_write_bytes


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)


def plot_history(history, path: str | os.PathLike) -> str:
    """Loss (left) and accuracy (right, when recorded) per epoch, training and validation
    (:func:`history_figure`), written as a PNG.

    Args:
        history: a ``cnnkit.train.History`` or its ``.history`` dict.
        path: the PNG file to write.

    Returns:
        ``path`` as a string.
    """
    return _save(history_figure(history), path)


# Above this many epochs the points are small and the epoch ticks left to matplotlib.
_FEW_EPOCHS = 20


def history_figure(history) -> Figure:
    """The figure of :func:`plot_history`. A single epoch is drawn as labelled bars (training
    next to validation) rather than lone dots; a few epochs get large markers on integer ticks."""
    hist = getattr(history, "history", history)
    epochs = list(getattr(history, "epochs", [])) or list(range(1, len(hist.get("loss", [])) + 1))
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if "accuracy" in hist else [])
    fig = Figure(figsize=(5.5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title) in zip(axes, panels):
        series = [(name, label, style) for name, label, style in
                  ((key, "train", "o-"), (f"val_{key}", "validation", "s--")) if name in hist]
        if len(epochs) == 1:
            bars = ax.bar([label for _, label, _ in series], [hist[name][0] for name, _, _ in series],
                          color=["C0", "C1"][:len(series)], width=0.5)
            ax.bar_label(bars, fmt="%.4f")
            ax.margins(y=0.15)  # room for the value labels
            ax.set_xlabel(f"epoch {epochs[0]} (one epoch)")
            ax.set_title(title)
            ax.grid(True, axis="y", alpha=0.3)
            continue
        few = len(epochs) <= _FEW_EPOCHS
        for name, label, style in series:
            ax.plot(epochs, hist[name], style, label=label, markersize=7 if few else 4)
        if few:
            ax.set_xticks(epochs)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return fig


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                          normalize: bool = True) -> str:
    """The confusion matrix as a heat map (rows: true class, columns: predicted class).

    Args:
        cm: (K, K) counts.
        classes: the K class names.
        path: the PNG file to write.
        normalize: colour and annotate by row fraction (recall per class) instead of counts.
    """
    cm = np.asarray(cm)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(classes) != k:
        raise ValueError(f"plot_confusion_matrix: expected a (K, K) matrix and K class names, "
                         f"got shape {cm.shape} and {len(classes)} names")
    values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = max(5.0, 0.55 * k + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        threshold = values.max() / 2 if values.size else 0
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > threshold else "black")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    return _save(fig, path)


def _to_display(images: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(N, C, H, W) or (N, H, W) -> (N, H, W[, 3]) in [0, 1] for imshow, plus a colormap."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else np.moveaxis(x[:, :3], 1, -1)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, C, H, W) or (N, H, W), got {np.shape(images)}")
    x = x.astype(np.float32)
    if np.issubdtype(np.asarray(images).dtype, np.integer):
        x = x / 255.0
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:  # e.g. normalised inputs: stretch to [0, 1] for display
        x = (x - lo) / max(hi - lo, 1e-12)
    return x, ("gray" if x.ndim == 3 else None)


def _mosaic(images: np.ndarray, cols: int, pad: int, fill: float = 1.0) -> np.ndarray:
    """(N, h, w[, 3]) -> one image with the N tiles on a grid of ``cols`` columns.

    One image in one axes draws far faster than one axes per tile."""
    n, h, w = images.shape[:3]
    rows = math.ceil(n / cols)
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad) + images.shape[3:]
    canvas = np.full(shape, fill, dtype=np.float32)
    for i in range(n):  # a loop over tiles (at most a few dozen), not over pixels
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    return canvas


def plot_predictions(images: np.ndarray, targets: Sequence[int], preds: Sequence[int],
                     classes: Sequence[str], path: str | os.PathLike, max_images: int = 25) -> str:
    """A grid of images labelled "predicted (true)": green when right, red when wrong.

    Args:
        images: (N, C, H, W) floats in [0, 1] (or uint8, or normalised: stretched for display).
        targets, preds: true and predicted class indices (N,).
        classes: class names.
        path: the PNG file to write.
        max_images: at most this many (the first ones).
    """
    n = min(len(images), max_images)
    if n == 0:
        raise ValueError("plot_predictions: no images given")
    x, cmap = _to_display(np.asarray(images)[:n])
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = x.shape[1:3]
    label_space = max(h // 2, 10)  # room above each tile for two lines of text
    canvas = _mosaic(x, cols, pad=label_space)
    fig = Figure(figsize=(1.9 * cols, 2.1 * rows))
    ax = fig.subplots()
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        t, p = int(targets[i]), int(preds[i])
        ax.text(label_space + c * (w + label_space) + w / 2, label_space + r * (h + label_space) - 1,
                f"{classes[p]}\n({classes[t]})", ha="center", va="bottom", fontsize=8,
                color="green" if p == t else "red")
    ax.set_title("predicted (true)")
    return _save(fig, path)


def plot_filters(weight: np.ndarray, path: str | os.PathLike, max_filters: int = 64) -> str:
    """The first convolution's kernels as small images (RGB when it has 3 input channels,
    else the first input channel in grey), each scaled to its own range.

    Args:
        weight: (out_channels, in_channels, kh, kw).
        path: the PNG file to write.
        max_filters: at most this many (the first ones).
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(f"plot_filters: expected a conv weight (O, I, kh, kw), got shape {w.shape}")
    w = w[:max_filters]
    if w.shape[1] == 3:
        imgs, cmap = np.moveaxis(w, 1, -1), None
    else:
        imgs, cmap = w[:, 0], "gray"
    axes_dims = tuple(range(1, imgs.ndim))
    lo = imgs.min(axis=axes_dims, keepdims=True)
    hi = imgs.max(axis=axes_dims, keepdims=True)
    imgs = (imgs - lo) / np.maximum(hi - lo, 1e-12)
    cols = min(8, len(imgs))
    rows = math.ceil(len(imgs) / cols)
    fig = Figure(figsize=(1.2 * cols, 1.2 * rows + 0.4))
    ax = fig.subplots()
    ax.imshow(_mosaic(imgs, cols, pad=1), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"first-layer filters ({weight.shape[2]}x{weight.shape[3]})")
    return _save(fig, path)


def first_conv_weight(model) -> np.ndarray | None:
    """The weight of the first ``Conv2d`` in ``model`` (None when it has none)."""
    from .nn.conv import Conv2d

    for module in model.modules():
        if isinstance(module, Conv2d):
            return module.weight.data
    return None
