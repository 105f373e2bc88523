"""Every plot writes a valid PNG (checked by signature and by decoding it with Pillow)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnkit import plots
from cnnkit.train import History

from train_helpers import is_png, tiny_model


def _check_png(path, min_side=100):
    assert is_png(path)
    with Image.open(path) as im:
        im.load()
        assert min(im.size) >= min_side


def test_history_plot(tmp_path):
    h = History()
    for e in range(1, 4):
        h.append(e, {"loss": 1.0 / e, "accuracy": 0.5 + 0.1 * e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + 0.09 * e})
    out = plots.plot_history(h, tmp_path / "curves.png")
    _check_png(out)


def test_history_plot_regression_has_loss_only(tmp_path):
    out = plots.plot_history({"loss": [3.0, 2.0, 1.0]}, tmp_path / "curves.png")
    _check_png(out)


def test_confusion_matrix_plot(tmp_path):
    cm = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 7]])
    _check_png(plots.plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png"))
    _check_png(plots.plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm_counts.png", normalize=False))
    with pytest.raises(ValueError, match="K class names"):
        plots.plot_confusion_matrix(cm, ["a", "b"], tmp_path / "bad.png")


@pytest.mark.parametrize("shape, dtype", [((7, 1, 28, 28), np.float32), ((5, 3, 32, 32), np.float32),
                                          ((4, 28, 28), np.uint8)])
def test_predictions_grid(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    if dtype == np.uint8:
        x = (x * 255).astype(np.uint8)
    n = shape[0]
    out = plots.plot_predictions(x, np.arange(n) % 3, (np.arange(n) + 1) % 3, ["x", "y", "z"], tmp_path / "p.png")
    _check_png(out)


def test_filters_of_the_first_conv(tmp_path):
    model = tiny_model()
    w = plots.first_conv_weight(model)
    assert w is model[0].weight.data
    _check_png(plots.plot_filters(w, tmp_path / "f.png"), min_side=50)
    rgb = np.random.default_rng(0).normal(size=(16, 3, 5, 5))
    _check_png(plots.plot_filters(rgb, tmp_path / "f_rgb.png"), min_side=50)
    with pytest.raises(ValueError, match="conv weight"):
        plots.plot_filters(np.zeros((3, 3)), tmp_path / "bad.png")


def test_plotting_leaves_no_temporary_files(tmp_path):
    plots.plot_history({"loss": [1.0, 0.5]}, tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
