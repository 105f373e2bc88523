"""Classification metrics in pure NumPy: accuracy, confusion matrix, precision / recall / F1,
and a scikit-learn-style classification report.

Conventions follow scikit-learn: confusion-matrix rows are true classes and columns are
predicted classes; a ratio whose denominator is 0 counts as 0 (sklearn's ``zero_division=0``);
macro averages run over the classes that occur in the targets or the predictions (sklearn's
default label set), weighted averages weigh classes by their support.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix", "precision_recall_f1", "classification_report"]


def _labels(values: Any, name: str, fn: str) -> np.ndarray:
    """Class indices from labels (N,) or scores (N, C) (argmax over classes), as int64."""
    arr = np.asarray(values)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError(f"{fn}: {name} has shape {arr.shape}, with no class columns")
        return arr.argmax(axis=1).astype(np.int64, copy=False)
    if arr.ndim != 1:
        raise ValueError(
            f"{fn}: {name} must be class indices of shape (N,) or scores of shape (N, C), got shape {arr.shape}"
        )
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "b" or (arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0)):
        return arr.astype(np.int64)
    raise ValueError(f"{fn}: {name} must hold integer class indices, got dtype {arr.dtype} with non-integer values")


def _pair(output: Any, targets: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    preds = _labels(output, "predictions", fn)
    tgt = np.asarray(targets)
    if tgt.ndim != 1:
        raise ValueError(f"{fn}: targets must be class indices of shape (N,), got shape {tgt.shape}")
    tgt = _labels(tgt, "targets", fn)
    if preds.shape[0] != tgt.shape[0]:
        raise ValueError(f"{fn}: {preds.shape[0]} predictions but {tgt.shape[0]} targets")
    if preds.shape[0] == 0:
        raise ValueError(f"{fn}: no samples (empty predictions and targets)")
    return preds, tgt


def accuracy(output: Any, targets: Any) -> float:
    """Fraction of samples whose predicted class equals the target.

    Args:
        output: predicted class indices (N,) or scores / logits / probabilities (N, C)
            (the argmax over classes is the prediction).
        targets: true class indices (N,).

    Returns:
        The accuracy as a Python float in [0, 1].

    Raises:
        ValueError: on mismatched lengths, empty input or non-integer labels.
    """
    preds, tgt = _pair(output, targets, "accuracy")
    return float(np.count_nonzero(preds == tgt)) / preds.shape[0]


def top_k_accuracy(scores: Any, targets: Any, k: int = 5) -> float:
    """Fraction of samples whose target is among the ``k`` highest scores.

    Args:
        scores: (N, C) logits or probabilities.
        targets: true class indices (N,).
        k: how many top classes count as correct (1 <= k <= C).

    Returns:
        The top-k accuracy as a Python float. Ties are broken by ``np.argpartition``.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"top_k_accuracy: scores must have shape (N, C), got {s.shape}")
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"top_k_accuracy: k must be in [1, {s.shape[1]}] for {s.shape[1]} classes, got {k}")
    _, tgt = _pair(s, targets, "top_k_accuracy")
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return float(np.count_nonzero((top == tgt[:, None]).any(axis=1))) / tgt.shape[0]


def confusion_matrix(preds: Any, targets: Any, num_classes: int | None = None) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        preds: predicted class indices (N,) or scores (N, C).
        targets: true class indices (N,).
        num_classes: matrix size K (default: largest label seen + 1).

    Returns:
        int64 array (K, K): ``cm[i, j]`` = samples of true class i predicted as j.

    Raises:
        ValueError: on a label outside [0, K), mismatched lengths or empty input.
    """
    p, t = _pair(preds, targets, "confusion_matrix")
    if num_classes is None:
        num_classes = int(max(p.max(), t.max())) + 1
    k = int(num_classes)
    if k <= 0:
        raise ValueError(f"confusion_matrix: num_classes must be positive, got {num_classes}")
    for name, arr in (("predictions", p), ("targets", t)):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise ValueError(f"confusion_matrix: {name} contain label {bad}, outside [0, {k}) for num_classes={k}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den == 0 (sklearn's zero_division=0)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f1(confusion: Any) -> dict[str, Any]:
    """Per-class and averaged precision, recall and F1 from a confusion matrix.

    Args:
        confusion: (K, K) counts, rows = true class, columns = predicted (as returned by
            ``confusion_matrix``).

    Returns:
        dict with float64 arrays of shape (K,): ``'precision'``, ``'recall'``, ``'f1'`` and
        int64 ``'support'`` (true samples per class); floats ``'macro_precision'``,
        ``'macro_recall'``, ``'macro_f1'`` (mean over classes present in targets or
        predictions), ``'weighted_precision'``, ``'weighted_recall'``, ``'weighted_f1'``
        (weighted by support) and ``'accuracy'``.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"precision_recall_f1: confusion must be a square (K, K) matrix, got shape {cm.shape}")
    if cm.size and (cm.min() < 0):
        raise ValueError("precision_recall_f1: confusion has negative counts")
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    # F1 as 2 tp / (2 tp + fp + fn), as sklearn computes it: 0 when the class never occurs.
    f1 = _ratio(2 * tp, support + predicted)
    present = (support + predicted) > 0
    total = support.sum()

    def macro(v: np.ndarray) -> float:
        return float(v[present].mean()) if present.any() else 0.0

    def weighted(v: np.ndarray) -> float:
        return float((v * support).sum() / total) if total > 0 else 0.0

    return {
        "precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
        "macro_precision": macro(precision), "macro_recall": macro(recall), "macro_f1": macro(f1),
        "weighted_precision": weighted(precision), "weighted_recall": weighted(recall),
        "weighted_f1": weighted(f1),
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
    }


def classification_report(preds: Any, targets: Any, num_classes: int | None = None,
                          class_names: Sequence[str] | None = None, digits: int = 4,
                          output_dict: bool = False) -> str | dict[str, Any]:
    """A per-class precision / recall / F1 / support table, like sklearn's.

    Args:
        preds: predicted class indices (N,) or scores (N, C).
        targets: true class indices (N,).
        num_classes: number of classes (default: ``len(class_names)`` or largest label + 1).
        class_names: row names (default: the class indices as strings).
        digits: decimals in the text table.
        output_dict: return a dict instead of text.

    Returns:
        Text table, or a dict in sklearn's layout: ``{name: {"precision", "recall",
        "f1-score", "support"}, "accuracy": float, "macro avg": {...}, "weighted avg": {...}}``.
        Every class gets a row; the macro average covers the classes present in the targets
        or predictions.
    """
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    cm = confusion_matrix(preds, targets, num_classes)
    k = cm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"classification_report: {len(names)} class_names for {k} classes")
    if len(set(names)) != k:
        raise ValueError("classification_report: class_names must be unique")
    prf = precision_recall_f1(cm)
    total = int(prf["support"].sum())
    report: dict[str, Any] = {}
    for i, name in enumerate(names):
        report[name] = {"precision": float(prf["precision"][i]), "recall": float(prf["recall"][i]),
                        "f1-score": float(prf["f1"][i]), "support": int(prf["support"][i])}
    report["accuracy"] = prf["accuracy"]
    for avg in ("macro", "weighted"):
        report[f"{avg} avg"] = {"precision": prf[f"{avg}_precision"], "recall": prf[f"{avg}_recall"],
                                "f1-score": prf[f"{avg}_f1"], "support": total}
    if output_dict:
        return report

    width = max(len("weighted avg"), *(len(n) for n in names))
    head = ["precision", "recall", "f1-score", "support"]
    lines = [f"{'':>{width}} " + " ".join(f"{h:>9}" for h in head), ""]

    def row(label: str, r: dict[str, Any]) -> str:
        return (f"{label:>{width}} " + " ".join(f"{r[h]:>9.{digits}f}" for h in head[:3])
                + f" {r['support']:>9}")

    lines += [row(n, report[n]) for n in names]
    lines.append("")
    lines.append(f"{'accuracy':>{width}} " + " ".join(f"{'':>9}" for _ in range(2))
                 + f" {report['accuracy']:>9.{digits}f} {total:>9}")
    lines += [row(f"{a} avg", report[f"{a} avg"]) for a in ("macro", "weighted")]
    return "\n".join(lines) + "\n"
