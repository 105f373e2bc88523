"""Transfer learning: a pretrained EfficientNet-Lite0 adapted to the classes of an image folder.

    result = cnnkit.finetune.finetune("shoes/", "runs/shoes", epochs=30)
    print(result["val"]["macro_f1"])           # held-out macro F1 of the best epoch
    cnnkit.predict.predict("runs/shoes", ["new.png"])

How it works, and why it is fast:

1. ``ImageFolder(data_dir)`` lists the images (one sub-folder per class); a stratified split
   holds out ``val_fraction`` of every class.
2. The pretrained backbone is frozen (``requires_grad=False``) and run ONCE, in eval mode, over
   every image (EfficientNet preprocessing: shorter side 256, centre crop 224). Its output is
   cached: the 1280 pooled features, or, with ``unfreeze_blocks=N``, the input of the last N
   MBConv blocks.
3. A new classifier ``Linear(1280, num_classes)`` (after the model's Dropout) is trained on the
   cached features with Adam and a class-weighted cross-entropy ("balanced": weight
   ``n / (k * n_c)``, so a rare class counts as much as a common one).
4. Optionally the last N blocks and the head convolution are unfrozen (their BatchNorms in train
   mode) and trained a few more epochs on the cached block inputs, forward and backward
   through those blocks only.
5. Every epoch is evaluated on the held-out split (accuracy, per-class and macro F1); the best
   epoch by macro F1 is saved to ``out_dir/best.safetensors`` with the metadata that
   ``cnnkit predict`` needs; the final weights go to ``last.safetensors``,
   ``out_dir/report.json`` records the run, and the plots ``cnnkit train`` writes are drawn
   (``curves.png``, ``confusion_matrix.png``, ``predictions.png``, ``filters.png``).

``cnnkit finetune --model efficientnet_lite0 --data FOLDER --out DIR [--epochs --lr
--batch-size --unfreeze-blocks --seed]`` runs the same from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._tensor import Tensor

from .models.imagenet import efficientnet_batch
from .nn.module import Module

SUPPORTED_MODELS = ("efficientnet_lite0",)
CHECKPOINT_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"
# Images per forward pass of the frozen backbone: every layer keeps its activations, and
# 224 x 224 EfficientNet-Lite0 peaks near 1 GB of memory for 16 images (2 GB for 32).
EXTRACT_BATCH = 16
REPORT_NAME = "report.json"


# ---------------------------------------------------------------------------- data helpers
def stratified_split(targets: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` holding out ``val_fraction`` of every class (at least one
    sample of each class with two or more samples), shuffled with ``seed``.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1), or a class with fewer than 2 samples.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"finetune: val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        if idx.size < 2:
            raise ValueError(f"finetune: class {int(c)} has {idx.size} image(s); each class needs at least 2 "
                             "(one to train on, one to validate)")
        idx = rng.permutation(idx)
        n_val = min(max(1, int(round(val_fraction * idx.size))), idx.size - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """``n / (k * n_c)`` per class (scikit-learn's "balanced"), float32; 0 for absent classes."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    w = np.zeros(num_classes)
    present = counts > 0
    w[present] = targets.size / (present.sum() * counts[present])
    return w.astype(np.float32)


def held_out_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support and macro averages (JSON-able),
    computed with ``cnnkit.train.metrics``."""
    from .train.metrics import confusion_matrix, precision_recall_f1

    cm = confusion_matrix(np.asarray(y_pred, dtype=np.int64), np.asarray(y_true, dtype=np.int64), len(classes))
    prf = precision_recall_f1(cm)
    return {
        "accuracy": prf["accuracy"], "macro_f1": prf["macro_f1"],
        "macro_precision": prf["macro_precision"], "macro_recall": prf["macro_recall"],
        "per_class": {c: {"precision": float(prf["precision"][i]), "recall": float(prf["recall"][i]),
                          "f1": float(prf["f1"][i]), "support": int(prf["support"][i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }


# ---------------------------------------------------------------------------- model pieces
def _run(modules: list[Module], x: np.ndarray) -> np.ndarray:
    for m in modules:
        x = m(x)
    return x


def _split_model(model, unfreeze_blocks: int):
    """(frozen prefix, trainable middle, pooling tail, classifier head) as lists of modules.

    prefix: stem and the first 16 - N blocks (always frozen; its output is cached);
    middle: the last N blocks + head convolution + BatchNorm + ReLU6 (trained when N > 0);
    tail: global pooling + flatten (parameter-free); head: dropout + the new classifier.
    """
    blocks = list(model._blocks)
    n_blocks = len(blocks)
    if not 0 <= int(unfreeze_blocks) <= n_blocks:
        raise ValueError(f"finetune: unfreeze_blocks must be in [0, {n_blocks}], got {unfreeze_blocks}")
    cut = n_blocks - int(unfreeze_blocks)
    prefix = [model._conv_stem, model._bn0, model._stem_act, *blocks[:cut]]
    middle = [*blocks[cut:], model._conv_head, model._bn1, model._head_act]
    tail = [model._avg_pooling, model._flatten]
    head = [model._dropout, model._fc]
    return prefix, middle, tail, head


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _extract_cache(samples, prefix, batch_size: int, log) -> np.ndarray:
    """Preprocess every image and run the frozen prefix once; returns the stacked outputs."""
    out = []
    t0 = time.perf_counter()
    live = sys.stdout.isatty()  # a progress line that rewrites itself only on a terminal
    for i in range(0, len(samples), batch_size):
        x = efficientnet_batch([p for p, _ in samples[i:i + batch_size]])
        out.append(_run(prefix, x))
        if live:
            log(f"\r  {min(i + batch_size, len(samples))}/{len(samples)} images", end="")
    log(f"{chr(13) if live else ''}  {len(samples)} images in {time.perf_counter() - t0:.1f} s")
    return np.concatenate(out)


# ---------------------------------------------------------------------------- training
class _Trainer:
    """Mini-batch training of ``net`` (a Sequential over shared modules) on cached inputs."""

    def __init__(self, net, loss_fn, optimizer, batch_size: int, rng: np.random.Generator):
        self.net, self.loss_fn, self.opt = net, loss_fn, optimizer
        self.batch_size, self.rng = batch_size, rng

    def epoch(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """One pass over ``(x, y)``; returns the mean training loss and accuracy."""
        self.net.train()
        order = self.rng.permutation(len(x))
        total, n, correct = 0.0, 0, 0
        for i in range(0, len(x), self.batch_size):
            idx = order[i:i + self.batch_size]
            self.opt.zero_grad()
            out = self.net(Tensor._wrap(x[idx]))
            loss = self.loss_fn(out, Tensor._wrap(y[idx]))
            loss.backward()
            self.opt.step()
            total += float(loss) * len(idx)
            n += len(idx)
            correct += int(np.count_nonzero(np.asarray(out).argmax(axis=1) == y[idx]))
        return total / max(n, 1), correct / max(n, 1)

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        return _batched(self.net, x, 256)


def _make_net(modules: list[Module]):
    from .nn import Sequential

    # A view over the model's own layers (shared objects): training it trains the model.
    net = Sequential(OrderedDict((f"m{i}", m) for i, m in enumerate(modules)))
    net.needs_input_grad = False  # cached inputs need no gradient
    return net


def _checkpoint_meta(classes, dataset, epoch, phase, val, settings) -> dict:
    # data_dir: `cnnkit evaluate RUN` re-evaluates the held-out images of this folder.
    return {"preprocess": "efficientnet", "input_shape": [3, 224, 224], "classes": list(classes),
            "dataset": dataset, "data_dir": settings["data_dir"], "epoch": int(epoch), "phase": phase, "base_model": settings["model"],
            "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"], "finetune": settings}


def finetune(data_dir: str | os.PathLike, out_dir: str | os.PathLike, model: str = "efficientnet_lite0",
             epochs: int = 30, lr: float = 1e-3, batch_size: int = 32, val_fraction: float = 0.2,
             seed: int = 0, unfreeze_blocks: int = 0, unfreeze_epochs: int = 3,
             unfreeze_lr: float | None = None, class_weights: str | list | None = "balanced",
             weight_decay: float = 1e-4, weights_path: str | os.PathLike | None = None,
             test_dir: str | os.PathLike | None = None, verbose: bool = True, overwrite: bool = False) -> dict:
    """Fine-tune a pretrained model on an image folder; keep the best epoch by held-out macro F1.

    Args:
        data_dir: ``data_dir/<class name>/<image files>`` (any size; colour or grey).
        out_dir: where ``best.safetensors``, ``last.safetensors``, ``report.json`` and the plots
            (``PLOTS``) are written (created if needed).
        model: the pretrained zoo model (``"efficientnet_lite0"``).
        epochs: epochs of classifier training on the cached features.
        lr: AdamW learning rate of the classifier.
        batch_size: mini-batch size of the training steps.
        val_fraction: fraction of every class held out for validation (stratified).
        seed: seeds the split, the classifier's initialisation, dropout and shuffling.
        unfreeze_blocks: also train the last N MBConv blocks and the head convolution for
            ``unfreeze_epochs`` epochs after the classifier (0: classifier only).
        unfreeze_epochs: epochs of that second phase.
        unfreeze_lr: its learning rate (default ``lr / 10``).
        class_weights: ``"balanced"``, None (unweighted), or one weight per class.
        weight_decay: AdamW weight decay.
        weights_path: a ``.pth`` file to use instead of the packaged pretrained weights.
        test_dir: optionally, a separate image folder (same class names) on which the best
            checkpoint is evaluated at the end (``result["test"]``).
        verbose: print progress and the final report.
        overwrite: replace the outputs of an earlier fine-tuning in ``out_dir`` (without it,
            such a folder is refused before anything is written).

    Returns:
        dict with ``checkpoint`` (path), ``classes``, ``val`` (metrics of the best epoch:
        accuracy, macro_f1, per_class, confusion_matrix), ``best_epoch``, ``best_phase``,
        ``history`` (per-epoch train loss, val accuracy and macro F1), ``n_train``, ``n_val``,
        ``seconds`` (feature extraction, training, total), and ``test`` (metrics on
        ``test_dir``) when given. Also written to ``report.json``.
    """
    from . import manual_seed, save
    from .data import ImageFolder
    from .models import efficientnet_lite
    from .nn import CrossEntropyLoss
    from .optim import AdamW

    log = (lambda *a, **k: print(*a, **k, flush=True)) if verbose else (lambda *a, **k: None)
    if model not in SUPPORTED_MODELS:
        raise ValueError(f"finetune: model must be one of {SUPPORTED_MODELS}, got {model!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"finetune: {name} must be >= 1, got {value}")
    if unfreeze_blocks and int(unfreeze_epochs) < 1:
        raise ValueError(f"finetune: unfreeze_epochs must be >= 1 when unfreezing, got {unfreeze_epochs}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"finetune: --seed / seed must be an integer >= 0, got {seed!r}")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    present = [n for n in (CHECKPOINT_NAME, LAST_NAME, REPORT_NAME) if (out_dir / n).exists()]
    if present and not overwrite:
        raise ValueError(f"finetune: --out {out_dir} already holds a fine-tuning run ({', '.join(present)}); "
                         "pass --overwrite to replace it, or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    ds = ImageFolder(data_dir, lazy=True)
    classes, targets, samples = list(ds.classes), np.asarray(ds.targets), list(ds.samples)
    k = len(classes)
    if k < 2:
        raise ValueError(f"finetune: {data_dir} has {k} class folder; need at least 2")
    train_idx, val_idx = stratified_split(targets, val_fraction, seed)
    y_train, y_val = targets[train_idx], targets[val_idx]
    log(f"finetune: {len(samples)} images, {k} classes ({', '.join(classes)}); "
        f"{len(train_idx)} train / {len(val_idx)} held out")

    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f"finetune: class_weights must be 'balanced', None or a list, got {class_weights!r}")
        weights = balanced_class_weights(y_train, k)
    elif class_weights is None:
        weights = None
    else:
        weights = np.asarray(class_weights, dtype=np.float32)
        if weights.shape != (k,):
            raise ValueError(f"finetune: class_weights needs {k} values (one per class), got shape {weights.shape}")

    net = efficientnet_lite.efficientnet_lite0(num_classes=k, pretrained=True, weights_path=weights_path)
    # Seed right before drawing the new classifier (and the dropout masks that follow), so the
    # run does not depend on how many random numbers building the backbone consumed.
    manual_seed(seed)
    net.replace_classifier(k)
    net.config = {"name": model, "kwargs": {"num_classes": k, "dropout": 0.2, "in_channels": 3}}
    net.eval()
    net.requires_grad_(False)
    net._fc.weight.requires_grad = net._fc.bias.requires_grad = True
    prefix, middle, tail, head = _split_model(net, unfreeze_blocks)

    # 1. Run the frozen part once: pooled features, and the last blocks' input when unfreezing.
    t0 = time.perf_counter()
    log("finetune: computing backbone features once (frozen, eval mode)")
    if unfreeze_blocks:
        cache = _extract_cache(samples, prefix, EXTRACT_BATCH, log)
        feats = _batched(lambda x: _run(middle + tail, x), cache, EXTRACT_BATCH)
    else:
        cache, feats = None, _extract_cache(samples, prefix + middle + tail, EXTRACT_BATCH, log)
    t_features = time.perf_counter() - t0

    loss_fn = CrossEntropyLoss(weight=weights)
    settings = {"model": model, "data_dir": str(Path(data_dir).resolve()), "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
                "val_fraction": float(val_fraction), "seed": int(seed), "unfreeze_blocks": int(unfreeze_blocks),
                "unfreeze_epochs": int(unfreeze_epochs) if unfreeze_blocks else 0,
                "class_weights": None if weights is None else [float(w) for w in weights],
                "weight_decay": float(weight_decay)}
    history: list[dict] = []
    best: dict[str, Any] = {"f1": -1.0}
    ckpt_path = out_dir / CHECKPOINT_NAME

    def consider(phase: str, epoch: int, train_loss: float, train_acc: float, logits: np.ndarray) -> None:
        val = held_out_report(y_val, logits.argmax(axis=1), classes)
        val_loss = float(loss_fn(logits, y_val))
        history.append({"phase": phase, "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]})
        mark = ""
        if val["macro_f1"] > best["f1"]:
            best.update(f1=val["macro_f1"], val=val, epoch=epoch, phase=phase, preds=logits.argmax(axis=1))
            net.eval()
            save(net, ckpt_path, meta=_checkpoint_meta(classes, ds.name, epoch, phase, val, settings))
            mark = "  * saved"
        log(f"  [{phase}] epoch {epoch:3d}  loss {train_loss:.4f}  val acc {val['accuracy']:.3f}  "
            f"val macro F1 {val['macro_f1']:.3f}{mark}")

    rng = np.random.default_rng(seed)

    def train_phase(phase: str, modules: list[Module], params, phase_lr: float, n_epochs: int,
                    x_tr: np.ndarray, x_val: np.ndarray) -> None:
        view = _make_net(modules)
        trainer = _Trainer(view, loss_fn, AdamW(params, lr=phase_lr, weight_decay=weight_decay), batch_size, rng)
        try:
            for epoch in range(1, n_epochs + 1):
                loss, acc = trainer.epoch(x_tr, y_train)
                consider(phase, epoch, loss, acc, trainer.logits(x_val))
        finally:
            view.needs_input_grad = True  # the view switched it off on the model's own first layer
            net.eval()

    # 2. Train the classifier on the cached features.
    t0 = time.perf_counter()
    log(f"finetune: training the classifier on cached features ({epochs} epochs)")
    train_phase("head", head, list(net._fc.parameters()), lr, int(epochs), feats[train_idx], feats[val_idx])

    # 3. Optionally unfreeze the last blocks: train them and the classifier on cached block inputs.
    if unfreeze_blocks:
        for m in middle:
            m.requires_grad_(True)
        params = [p for m in middle + head for p in m.parameters() if p.requires_grad]
        log(f"finetune: training the last {unfreeze_blocks} block(s) + head ({unfreeze_epochs} epochs)")
        phase_lr = lr / 10 if unfreeze_lr is None else unfreeze_lr
        train_phase("unfrozen", middle + tail + head, params, phase_lr, int(unfreeze_epochs),
                    cache[train_idx], cache[val_idx])
    t_train = time.perf_counter() - t0
    last = history[-1]
    save(net, out_dir / LAST_NAME, meta=_checkpoint_meta(classes, ds.name, last["epoch"], last["phase"],
                                                       {"accuracy": last["val_accuracy"],
                                                        "macro_f1": last["val_macro_f1"]}, settings))

    result = {"checkpoint": str(ckpt_path), "last_checkpoint": str(out_dir / LAST_NAME), "classes": classes,
              "best_epoch": best["epoch"], "best_phase": best["phase"], "val": best["val"], "history": history,
              "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
              "seconds": {"features": round(t_features, 2), "training": round(t_train, 2),
                          "total": round(time.perf_counter() - t_start, 2)},
              "settings": settings}
    if test_dir is not None:
        t0 = time.perf_counter()
        log(f"finetune: evaluating the best checkpoint on {test_dir}")
        result["test"] = evaluate_folder(ckpt_path, test_dir, EXTRACT_BATCH)
        result["seconds"]["test"] = round(time.perf_counter() - t0, 2)
        result["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    from .io.atomic import atomic_write_text

    atomic_write_text(out_dir / REPORT_NAME, json.dumps(result, indent=2))
    _write_plots(out_dir, net, history, best, [samples[i] for i in val_idx], y_val, classes)
    log(format_report(result))
    return result


PLOTS = ("curves.png", "confusion_matrix.png", "predictions.png", "filters.png")


def _write_plots(out_dir: Path, net, history: list[dict], best: dict, val_samples, y_val, classes) -> None:
    """The plots `cnnkit train` writes: learning curves (the epochs of both phases in a row),
    the best epoch's held-out confusion matrix and predictions, the first layer's filters."""
    from . import plots

    curves = {"loss": [h["train_loss"] for h in history], "val_loss": [h["val_loss"] for h in history],
              "accuracy": [h["train_accuracy"] for h in history],
              "val_accuracy": [h["val_accuracy"] for h in history]}
    plots.plot_history(curves, out_dir / PLOTS[0])
    plots.plot_confusion_matrix(np.asarray(best["val"]["confusion_matrix"]), classes, out_dir / PLOTS[1])
    n = min(25, len(val_samples))
    # Back from EfficientNet's (pixel - 127) / 128 to [0, 1]: the crops exactly as the model saw them.
    shown = np.clip((efficientnet_batch([p for p, _ in val_samples[:n]]) * 128 + 127) / 255, 0, 1)
    plots.plot_predictions(shown, y_val[:n], best["preds"][:n], classes, out_dir / PLOTS[2], max_images=n)
    weight = plots.first_conv_weight(net)
    if weight is not None:
        plots.plot_filters(weight, out_dir / PLOTS[3])


def evaluate_folder(model: Module | str | os.PathLike, folder: str | os.PathLike, batch_size: int = 16,
                    held_out: tuple[float, int] | None = None) -> dict:
    """Accuracy and F1 of a fine-tuned model on another image folder (e.g. a test set).

    Args:
        model: a fine-tune output folder or checkpoint (or a loaded model with ``model.meta``).
        folder: ``folder/<class name>/<images>``; its class names must be among the model's.
        batch_size: images per forward pass.
        held_out: ``(val_fraction, seed)``: only the images ``finetune`` held out of this
            folder with these settings (the same stratified split); None: every image.

    Returns:
        the same metrics as ``finetune``'s ``val``: accuracy, macro_f1, per_class, confusion_matrix
        (over the model's classes), plus ``loss`` (mean cross-entropy) and ``num_samples``.
    """
    from .data import ImageFolder
    from .predict import load_predictor, predict_proba, resolve_meta

    if isinstance(model, (str, os.PathLike)):
        model, meta = load_predictor(model)
    else:
        meta = resolve_meta(model)
    classes = list(meta.get("classes") or [])
    ds = ImageFolder(folder, lazy=True)
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise ValueError(f"evaluate_folder: classes {unknown} of {folder} are not classes of the model ({classes})")
    samples = list(ds.samples)
    if held_out is not None:
        _, val_idx = stratified_split(np.asarray(ds.targets), held_out[0], held_out[1])
        samples = [samples[i] for i in val_idx]
    y_true = np.array([classes.index(ds.classes[label]) for _, label in samples], dtype=np.int64)
    probs = predict_proba(model, [p for p, _ in samples], meta, batch_size)
    report = held_out_report(y_true, probs.argmax(axis=1), classes)
    # float64 log of the float32 probabilities; a probability rounded to 0 counts as float32's tiniest.
    true_p = np.maximum(probs[np.arange(len(y_true)), y_true].astype(np.float64), np.finfo(np.float32).tiny)
    report["loss"] = float(-np.log(true_p).mean())
    report["num_samples"] = int(len(y_true))
    return report


def format_report(result: dict) -> str:
    """A readable table of a ``finetune`` result."""
    val = result["val"]
    width = max(len(c) for c in result["classes"] + ["class"])
    lines = [f"best: {result['best_phase']} epoch {result['best_epoch']}  held-out accuracy "
             f"{val['accuracy']:.3f}  macro F1 {val['macro_f1']:.3f}  ({result['n_val']} images)",
             f"{'class':<{width}}  precision  recall     f1  support"]
    for c, m in val["per_class"].items():
        lines.append(f"{c:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    if "test" in result:
        test = result["test"]
        n_test = sum(m["support"] for m in test["per_class"].values())
        lines.append(f"test folder: accuracy {test['accuracy']:.3f}  macro F1 {test['macro_f1']:.3f}  "
                     f"({n_test} images); per-class F1 "
                     + ", ".join(f"{c} {m['f1']:.3f}" for c, m in test["per_class"].items()))
    s = result["seconds"]
    lines.append(f"time: features {s['features']:.1f} s, training {s['training']:.1f} s, total {s['total']:.1f} s")
    lines.append(f"checkpoint: {result['checkpoint']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cnnkit finetune --model efficientnet_lite0 --data FOLDER --out DIR [...]``."""
    p = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained model on an image folder (one sub-folder per class)",
        description="Transfer learning: freeze the pretrained backbone, cache its features once, train a new "
                    "classifier (class-weighted), keep the best epoch by held-out macro F1. "
                    "Then: cnnkit predict OUT_DIR IMAGE...")
    p.add_argument("--model", default="efficientnet_lite0", choices=SUPPORTED_MODELS,
                   help="the pretrained model to adapt (default efficientnet_lite0)")
    p.add_argument("--data", required=True, metavar="FOLDER", help="image folder: FOLDER/<class>/<images>")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (best.safetensors, last.safetensors, report.json, curves.png, "
                        "confusion_matrix.png, predictions.png, filters.png)")
    p.add_argument("--epochs", type=int, default=30, help="classifier epochs (default 30)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction per class (default 0.2)")
    p.add_argument("--unfreeze-blocks", type=int, default=0,
                   help="also train the last N blocks afterwards (default 0)")
    p.add_argument("--unfreeze-epochs", type=int, default=3, help="epochs with unfrozen blocks (default 3)")
    p.add_argument("--no-class-weights", action="store_true", help="do not weight the loss by class frequency")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and shuffling (default 0)")
    p.add_argument("--test", default=None, metavar="FOLDER",
                   help="also evaluate the best checkpoint on this image folder (same class names)")
    p.add_argument("--weights", default=None, metavar="PTH",
                   help="pretrained .pth file to use instead of the packaged one")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in --out")
    p.set_defaults(func=run_finetune)
    return p


def run_finetune(args: argparse.Namespace) -> int:
    """The ``finetune`` subcommand; returns the exit code."""
    try:
        finetune(args.data, args.out, model=args.model, epochs=args.epochs, lr=args.lr,
                 batch_size=args.batch_size, val_fraction=args.val_fraction, seed=args.seed,
                 unfreeze_blocks=args.unfreeze_blocks, unfreeze_epochs=args.unfreeze_epochs,
                 class_weights=None if args.no_class_weights else "balanced", weights_path=args.weights,
                 test_dir=args.test, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as exc:
        print(f"cnnkit finetune: error: {exc}", file=sys.stderr)
        return 2
    return 0
