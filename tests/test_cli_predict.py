"""`cnnkit predict` warns when an image is unlike the training images (the checkpoint keeps their
statistics) and `--invert` predicts on the image's negative."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.data import FashionMNIST
from cnnkit.predict import InputMismatchWarning, image_statistics, predict

from cli_helpers import train_tiny, write_light_on_dark


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A LeNet trained on light items on black; a test image as a PNG and its negative (a dark
    item on white, as product photos are)."""
    write_light_on_dark(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    assert train_tiny(tmp_path / "run") == 0
    image = FashionMNIST(train=False, download=False).data[3]
    Image.fromarray(image).save(tmp_path / "item.png")
    Image.fromarray(255 - image).save(tmp_path / "photo.png")
    return tmp_path


def test_the_checkpoint_keeps_the_training_images_statistics(trained):
    stats = cnnkit.load(trained / "run" / "best.safetensors").checkpoint_meta["input_stats"]
    assert stats["border"] == [0.0, 0.0]  # every generated image has a black frame
    train = FashionMNIST(train=True, download=False)
    per_image = image_statistics(train.data[:, None].astype(np.float32) / 255)["mean"]
    # A sample's average and spread of the per-image means lie within the whole set's range.
    assert per_image.min() <= stats["mean"][0] <= per_image.max()
    assert 0 < stats["mean"][1] <= per_image.max() - per_image.min()


def test_predict_warns_about_a_dark_item_on_white_and_invert_fixes_it(trained, capsys):
    run = str(trained / "run")
    capsys.readouterr()
    assert main(["predict", run, str(trained / "item.png"), "--topk", "3"]) == 0
    item = capsys.readouterr()
    assert "warning" not in item.err  # like the training images: no warning

    assert main(["predict", run, str(trained / "photo.png"), "--topk", "3"]) == 0
    photo = capsys.readouterr()
    warning = [line for line in photo.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "photo.png" in warning[0] and "--invert" in warning[0]
    assert "light items on a dark background" in warning[0]

    assert main(["predict", run, str(trained / "photo.png"), "--topk", "3", "--invert"]) == 0
    inverted = capsys.readouterr()
    assert "warning" not in inverted.err
    # The negative of the negative is the item itself, pixel for pixel: the same answer.
    assert inverted.out.splitlines()[1:] == item.out.splitlines()[1:]
    assert photo.out.splitlines()[1:] != item.out.splitlines()[1:]


def test_the_python_api_raises_a_warning_category(trained):
    with pytest.warns(InputMismatchWarning, match="photo.png"):
        predict(trained / "run", [trained / "photo.png"])
