"""`cnnkit finetune` writes the plots `cnnkit train` writes, `cnnkit evaluate` re-evaluates the
images it held out, and a one-epoch curves.png is readable (bars, not two lone dots)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnkit import plots
from cnnkit.cli import main
from cnnkit.finetune import PLOTS
from cnnkit.io import save_torch
from cnnkit.models import efficientnet_lite

from cli_helpers import train_tiny, write_light_on_dark
from train_helpers import is_png


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Randomly initialised EfficientNet-Lite0 weights as a .pth file: the fine-tuning machinery
    runs the same, without the pretrained-weights package."""
    path = tmp_path_factory.mktemp("weights") / "random_lite0.pth"
    save_torch(efficientnet_lite.efficientnet_lite0().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of four 40x40 images: bright squares at different places, on grey noise."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["left", "middle", "right"]):
        (root / name).mkdir()
        for i in range(4):
            img = rng.integers(0, 90, size=(40, 40, 3)).astype(np.uint8)
            img[10:30, 2 + 13 * c: 12 + 13 * c] = 250
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_finetune_writes_trains_plots_and_evaluate_reads_its_folder(weights, folder, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--data", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                 "--val-fraction", "0.25", "--weights", str(weights)]) == 0
    for name in PLOTS:
        assert is_png(out / name), name
    report = json.loads((out / "report.json").read_text())
    assert set(report["history"][0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    capsys.readouterr()

    # The checkpoint records its folder: `cnnkit evaluate DIR` needs nothing else and evaluates
    # exactly the held-out images (the same true classes; predictions are not compared bit for
    # bit: the fine-tune scored cached features computed in other batches).
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    saved = json.loads((out / f"eval-{folder.name}-best" / "evaluation.json").read_text())
    assert saved["num_samples"] == report["n_val"] == 3 and "held out" in text
    assert np.sum(saved["confusion_matrix"], axis=1).tolist() == \
        np.sum(report["val"]["confusion_matrix"], axis=1).tolist() == [1, 1, 1]


def test_a_one_epoch_history_is_drawn_as_labelled_bars():
    fig = plots.history_figure({"loss": [0.75], "val_loss": [0.5], "accuracy": [0.6], "val_accuracy": [0.7]})
    for ax, values in zip(fig.axes, ([0.75, 0.5], [0.6, 0.7])):
        heights = [p.get_height() for p in ax.patches]
        assert heights == values  # one bar per series
        assert [t.get_text() for t in ax.texts] == [f"{v:.4f}" for v in values]
    several = plots.history_figure({"loss": [0.9, 0.7, 0.5], "val_loss": [0.8, 0.7, 0.6]})
    assert not several.axes[0].patches and len(several.axes[0].lines) == 2


def test_a_one_epoch_train_run_writes_bar_curves(tmp_path, monkeypatch):
    """Through the command: the curves figure of a one-epoch run is the bar chart."""
    write_light_on_dark(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    figures = []
    real = plots.history_figure
    monkeypatch.setattr(plots, "history_figure", lambda h: figures.append(real(h)) or figures[-1])
    assert train_tiny(tmp_path / "run") == 0
    assert is_png(tmp_path / "run" / "curves.png")
    (fig,) = figures
    assert [len(ax.patches) for ax in fig.axes] == [2, 2]
