"""`cnnkit evaluate`: the confusion matrix printed and saved, never overwritten without a flag;
image folders (`--data DIR`, or the folder a fine-tune recorded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.finetune import stratified_split

from cli_helpers import FASHION_CLASSES, snapshot, train_tiny, write_light_on_dark
from train_helpers import is_png


@pytest.fixture
def run(tmp_path, monkeypatch):
    write_light_on_dark(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    out = tmp_path / "run"
    assert train_tiny(out) == 0
    return out


def _printed_matrix(text: str, k: int) -> np.ndarray:
    """The rows printed under the 'confusion matrix' header: '  i  name  c0 c1 ...'."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix")) + 2
    return np.array([[int(v) for v in line.split()[-k:]] for line in lines[start:start + k]])


def test_evaluate_prints_and_saves_the_confusion_matrix(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    text = capsys.readouterr().out
    folder = run / "eval-fashion-mnist-best"
    assert f"wrote {folder}" in text
    report = json.loads((folder / "evaluation.json").read_text())
    cm = np.array(report["confusion_matrix"])
    # The printed matrix is the saved one, and it accounts for every test image.
    np.testing.assert_array_equal(_printed_matrix(text, 10), cm)
    assert cm.sum() == report["num_samples"] == 60
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12)
    assert (folder / "confusion_matrix.txt").read_text().strip() in text
    assert is_png(folder / "confusion_matrix.png")
    assert report["classes"] == FASHION_CLASSES
    # Same weights, same test images as the training run: the accuracy it printed.
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["accuracy"] == metrics["test_accuracy"] and report["loss"] == metrics["test_loss"]
    assert f"accuracy {100 * metrics['test_accuracy']:.2f}%" in text.strip().splitlines()[-1]


def test_evaluate_never_overwrites_without_the_flag(run, tmp_path, capsys):
    assert main(["evaluate", str(run)]) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds an evaluation" in err and "--overwrite" in err
    assert snapshot(run) == before
    assert main(["evaluate", str(run), "--overwrite"]) == 0
    assert main(["evaluate", str(run / "last.safetensors"), "--out", str(tmp_path / "elsewhere")]) == 0
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == [
        "confusion_matrix.png", "confusion_matrix.txt", "evaluation.json"]


def _write_folder(root, classes, per_class, negative=False):
    """PNG files root/<class>/<i>.png: the generated training images of those classes (or
    their negatives: dark items on white)."""
    from cnnkit.data import FashionMNIST

    ds = FashionMNIST(train=True, download=False)
    for name in classes:
        (root / name).mkdir(parents=True)
        label = FASHION_CLASSES.index(name)
        for j, i in enumerate(np.flatnonzero(ds.targets == label)[:per_class]):
            Image.fromarray(255 - ds.data[i] if negative else ds.data[i]).save(root / name / f"{j}.png")
    return root


def test_evaluate_an_image_folder(run, tmp_path, capsys):
    folder = _write_folder(tmp_path / "shoes", ["Sandal", "Sneaker", "Ankle boot"], 4)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(folder)]) == 0
    printed = capsys.readouterr()
    text = printed.out
    assert "warning" not in printed.err
    report = json.loads((run / "eval-shoes-best" / "evaluation.json").read_text())
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == report["num_samples"] == 12
    # Only the three shoe rows hold images, four each.
    assert cm.sum(axis=1).tolist() == [0, 0, 0, 0, 0, 4, 0, 4, 0, 4]
    np.testing.assert_array_equal(_printed_matrix(text, 10), cm)

    # Dark items on white, for a model of light items on black: one warning line for the folder.
    photos = _write_folder(tmp_path / "photos", ["Sandal", "Bag"], 3, negative=True)
    assert main(["evaluate", str(run), "--data", str(photos)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: 6 of 6 images look unlike the training images" in err


def test_evaluate_the_folder_a_fine_tune_recorded(run, tmp_path, capsys):
    """A fine-tune checkpoint records its image folder: `cnnkit evaluate RUN` evaluates the
    images the fine-tune held out (its own stratified split), nothing to pass."""
    classes = ["Sandal", "Sneaker", "Ankle boot"]
    folder = _write_folder(tmp_path / "shoes", classes, 6)
    model = cnnkit.models.create("lenet", num_classes=3)
    meta = {**cnnkit.load(run / "best.safetensors").checkpoint_meta, "classes": sorted(classes),
            "dataset": "shoes", "data_dir": str(folder), "finetune": {"val_fraction": 0.5, "seed": 3}}
    meta.pop("run")
    (tmp_path / "ft").mkdir()
    cnnkit.save(model, tmp_path / "ft" / "best.safetensors", meta=meta)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "ft")]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "ft" / "eval-shoes-best" / "evaluation.json").read_text())
    targets = np.repeat(np.arange(3), 6)  # ImageFolder's order: sorted classes, 6 images each
    _, held_out = stratified_split(targets, 0.5, seed=3)
    assert report["num_samples"] == len(held_out) == 9
    assert np.array(report["confusion_matrix"]).sum(axis=1).tolist() == [3, 3, 3]
    assert "held out" in text

    # A checkpoint of an image folder that does not record where it is: one line saying what to pass.
    del meta["data_dir"]
    cnnkit.save(model, tmp_path / "ft" / "old.safetensors", meta=meta)
    assert main(["evaluate", str(tmp_path / "ft" / "old.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "'shoes'" in err and "--data DIR" in err and err.count("\n") == 1
