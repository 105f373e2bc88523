"""Classification metrics: hand-computed cases, an independent loop reference, sklearn parity."""

from fractions import Fraction as F

import numpy as np
import pytest

import cnnkit.train.metrics as metrics

# Case A: three classes, every class both present and predicted.
A_T = [0, 0, 0, 1, 1, 2, 2, 2]
A_P = [0, 1, 0, 1, 2, 2, 2, 0]
A_CM = [[2, 1, 0],
        [0, 1, 1],
        [1, 0, 2]]

# Case B: class 2 is predicted but never true, class 3 is true but never predicted correctly.
B_T = [0, 0, 1, 1, 1, 3, 3]
B_P = [0, 2, 1, 1, 0, 1, 0]
B_CM = [[1, 0, 1, 0],
        [1, 2, 0, 0],
        [0, 0, 0, 0],
        [1, 1, 0, 0]]


def test_accuracy_by_hand():
    assert metrics.accuracy(np.array(A_P), np.array(A_T)) == 5 / 8
    assert metrics.accuracy(B_P, B_T) == 3 / 7
    logits = np.array([[2.0, 1.0, 0.0], [0.1, 0.3, 0.2], [0.0, -1.0, 5.0], [9.0, 0.0, 0.0]], np.float32)
    assert metrics.accuracy(logits, np.array([0, 1, 1, 0])) == 0.75
    assert metrics.accuracy(np.array([1.0, 2.0]), np.array([1, 2])) == 1.0  # integral floats are labels


def test_top_k_accuracy_by_hand():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    t = np.array([2, 2, 0])
    assert metrics.top_k_accuracy(scores, t, k=1) == 0.0
    assert metrics.top_k_accuracy(scores, t, k=2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(scores, t, k=3) == 1.0


def test_confusion_matrix_by_hand():
    cm = metrics.confusion_matrix(np.array(A_P), np.array(A_T), 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, A_CM)
    np.testing.assert_array_equal(metrics.confusion_matrix(B_P, B_T, 4), B_CM)
    np.testing.assert_array_equal(metrics.confusion_matrix(B_P, B_T), B_CM)  # K inferred = 4
    big = metrics.confusion_matrix(B_P, B_T, 6)
    assert big.shape == (6, 6) and big[4:].sum() == 0 and big[:, 4:].sum() == 0
    # Logits in, argmax taken.
    logits = np.eye(3)[A_P] * 3.0
    np.testing.assert_array_equal(metrics.confusion_matrix(logits, A_T, 3), A_CM)


def _close(x, fraction):
    return x == pytest.approx(float(fraction), rel=1e-12, abs=1e-15)


def test_precision_recall_f1_case_a_by_hand():
    r = metrics.precision_recall_f1(np.array(A_CM))
    np.testing.assert_allclose(r["precision"], [2 / 3, 1 / 2, 2 / 3], rtol=1e-12)
    np.testing.assert_allclose(r["recall"], [2 / 3, 1 / 2, 2 / 3], rtol=1e-12)
    np.testing.assert_allclose(r["f1"], [2 / 3, 1 / 2, 2 / 3], rtol=1e-12)
    np.testing.assert_array_equal(r["support"], [3, 2, 3])
    assert _close(r["macro_precision"], F(11, 18))
    assert _close(r["macro_f1"], F(11, 18))
    assert _close(r["weighted_recall"], F(5, 8))
    assert _close(r["accuracy"], F(5, 8))


def test_precision_recall_f1_case_b_zero_division_by_hand():
    r = metrics.precision_recall_f1(B_CM)
    # precision: tp / column sum = [1/3, 2/3, 0/1, 0/0 -> 0]
    np.testing.assert_allclose(r["precision"], [1 / 3, 2 / 3, 0, 0], rtol=1e-12)
    # recall: tp / row sum = [1/2, 2/3, 0/0 -> 0, 0/2]
    np.testing.assert_allclose(r["recall"], [1 / 2, 2 / 3, 0, 0], rtol=1e-12)
    # f1 = 2 tp / (row + column) = [2/5, 4/6, 0/1, 0/2]
    np.testing.assert_allclose(r["f1"], [2 / 5, 2 / 3, 0, 0], rtol=1e-12)
    np.testing.assert_array_equal(r["support"], [2, 3, 0, 2])
    assert _close(r["macro_precision"], F(1, 4))
    assert _close(r["macro_recall"], F(7, 24))
    assert _close(r["macro_f1"], F(4, 15))
    assert _close(r["weighted_precision"], F(8, 21))
    assert _close(r["weighted_recall"], F(3, 7))
    assert _close(r["weighted_f1"], F(2, 5))
    assert _close(r["accuracy"], F(3, 7))


def test_absent_classes_do_not_change_macro_average():
    small = metrics.precision_recall_f1(metrics.confusion_matrix(B_P, B_T, 4))
    big = metrics.precision_recall_f1(metrics.confusion_matrix(B_P, B_T, 7))
    for key in ("macro_precision", "macro_recall", "macro_f1", "weighted_f1", "accuracy"):
        assert small[key] == big[key]
    np.testing.assert_array_equal(big["f1"][4:], 0)


def test_all_zero_confusion_gives_zeros():
    r = metrics.precision_recall_f1(np.zeros((3, 3), np.int64))
    assert r["macro_f1"] == 0.0 and r["accuracy"] == 0.0 and not np.any(r["precision"])


def _loop_reference(t, p, k):
    """Straight-from-the-definitions per-class loop, independent of the vectorised code."""
    out = []
    for c in range(k):
        tp = sum(1 for a, b in zip(t, p) if a == c and b == c)
        fp = sum(1 for a, b in zip(t, p) if a != c and b == c)
        fn = sum(1 for a, b in zip(t, p) if a == c and b != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out.append((prec, rec, f1, tp + fn))
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_matches_loop_reference_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    k = 6
    t = rng.integers(0, k, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, k - 1, 200))  # class 5 rarely predicted
    r = metrics.precision_recall_f1(metrics.confusion_matrix(p, t, k))
    ref = _loop_reference(t.tolist(), p.tolist(), k)
    np.testing.assert_allclose(r["precision"], ref[:, 0], rtol=1e-12)
    np.testing.assert_allclose(r["recall"], ref[:, 1], rtol=1e-12)
    np.testing.assert_allclose(r["f1"], ref[:, 2], rtol=1e-12)
    np.testing.assert_array_equal(r["support"], ref[:, 3])


def test_classification_report_dict_and_text():
    names = ["cat", "dog", "bird", "fish"]
    rep = metrics.classification_report(B_P, B_T, class_names=names, output_dict=True)
    assert list(rep) == names + ["accuracy", "macro avg", "weighted avg"]
    assert rep["dog"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                          "f1-score": pytest.approx(2 / 3), "support": 3}
    assert rep["fish"]["precision"] == 0.0 and rep["fish"]["support"] == 2
    assert rep["accuracy"] == pytest.approx(3 / 7)
    assert rep["macro avg"]["f1-score"] == pytest.approx(4 / 15)
    assert rep["weighted avg"]["support"] == 7
    text = metrics.classification_report(B_P, B_T, class_names=names, digits=3)
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[3].split() == ["dog", "0.667", "0.667", "0.667", "3"]
    assert lines[-3].split() == ["accuracy", "0.429", "7"]
    assert lines[-2].split() == ["macro", "avg", "0.250", "0.292", "0.267", "7"]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="accuracy: 3 predictions but 2 targets"):
        metrics.accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="accuracy: no samples"):
        metrics.accuracy(np.array([], np.int64), np.array([], np.int64))
    with pytest.raises(ValueError, match="targets must be class indices of shape \\(N,\\), got shape \\(2, 2\\)"):
        metrics.accuracy([0, 1], np.eye(2))
    with pytest.raises(ValueError, match="non-integer values"):
        metrics.accuracy(np.array([0.5, 1.0]), [0, 1])
    with pytest.raises(ValueError, match="predictions must be class indices of shape \\(N,\\) or scores"):
        metrics.accuracy(np.zeros((2, 3, 4)), [0, 1])
    with pytest.raises(ValueError, match=r"confusion_matrix: targets contain label 4, outside \[0, 3\)"):
        metrics.confusion_matrix([0, 1], [0, 4], 3)
    with pytest.raises(ValueError, match=r"confusion_matrix: predictions contain label -1"):
        metrics.confusion_matrix([0, -1], [0, 1], 3)
    with pytest.raises(ValueError, match="square"):
        metrics.precision_recall_f1(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k must be in \\[1, 3\\]"):
        metrics.top_k_accuracy(np.zeros((2, 3)), [0, 1], k=4)
    with pytest.raises(ValueError, match="2 class_names for 4 classes"):
        metrics.classification_report(B_P, B_T, num_classes=4, class_names=["a", "b"])


# ---------------------------------------------------------------------------------- sklearn
@pytest.mark.parametrize("seed", range(3))
def test_matches_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    k = 5
    t = rng.integers(0, k, 300)
    p = np.where(rng.random(300) < 0.5, t, rng.integers(0, k, 300))
    p[p == 3] = 4  # class 3 never predicted: exercises zero division
    cm = metrics.confusion_matrix(p, t, k)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(t, p, labels=range(k)))
    r = metrics.precision_recall_f1(cm)
    pr, rc, f1, sup = skm.precision_recall_fscore_support(t, p, labels=range(k), zero_division=0)
    np.testing.assert_allclose(r["precision"], pr, rtol=1e-12)
    np.testing.assert_allclose(r["recall"], rc, rtol=1e-12)
    np.testing.assert_allclose(r["f1"], f1, rtol=1e-12)
    np.testing.assert_array_equal(r["support"], sup)
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(t, p, average=avg, zero_division=0)
        assert r[f"{avg}_precision"] == pytest.approx(pr, rel=1e-12)
        assert r[f"{avg}_recall"] == pytest.approx(rc, rel=1e-12)
        assert r[f"{avg}_f1"] == pytest.approx(f1, rel=1e-12)
    assert metrics.accuracy(p, t) == pytest.approx(skm.accuracy_score(t, p), rel=1e-15)
    ours = metrics.classification_report(p, t, output_dict=True)
    theirs = skm.classification_report(t, p, output_dict=True, zero_division=0)
    assert set(ours) == set(theirs)
    for key, val in theirs.items():
        if isinstance(val, dict):
            for stat, v in val.items():
                assert ours[key][stat] == pytest.approx(v, rel=1e-12), (key, stat)
        else:
            assert ours[key] == pytest.approx(val, rel=1e-12)


def test_macro_excludes_classes_absent_everywhere_like_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    r = metrics.precision_recall_f1(metrics.confusion_matrix(B_P, B_T, 6))
    pr, rc, f1, _ = skm.precision_recall_fscore_support(B_T, B_P, average="macro", zero_division=0)
    assert (r["macro_precision"], r["macro_recall"], r["macro_f1"]) == pytest.approx((pr, rc, f1), rel=1e-12)
