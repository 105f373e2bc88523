"""The command's messages use the command's words (`--data-root`, not `root=...`) and one name
per dataset (`cifar10`, wherever it is printed; `cifar-10` accepted)."""

from __future__ import annotations

import re

import pytest

import cnnkit.data.download as download_mod
import cnnkit.data.locate as locate_mod
from cnnkit.cli import main
from cnnkit.runner import resolve_config


@pytest.fixture
def nothing_anywhere(tmp_path, monkeypatch):
    """No dataset in any place cnnkit looks, and no network."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(locate_mod, "SYSTEM_DIR", tmp_path / "system")

    def offline(url, out):
        raise OSError("network is unreachable")

    monkeypatch.setattr(download_mod, "fetch", offline)
    return tmp_path


API_WORDS = ("download=True", "download=False", "root=", "root argument")


@pytest.mark.parametrize("argv", [
    ["train", "--model", "lenet", "--dataset", "fashion-mnist"],
    ["evaluate", "CKPT", "--dataset", "mnist"],
])
def test_a_missing_dataset_is_explained_in_cli_words(nothing_anywhere, capsys, argv):
    if argv[0] == "evaluate":
        import cnnkit

        ckpt = nothing_anywhere / "m.safetensors"
        cnnkit.save(cnnkit.models.create("lenet"), ckpt)
        argv = [str(ckpt) if a == "CKPT" else a for a in argv]
    else:
        argv = argv + ["--out", str(nothing_anywhere / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnkit: error: ") and "not found" in err
    assert "--data-root DIR" in err and "network is unreachable" in err
    assert not [w for w in API_WORDS if w in err], err


def test_datasets_speaks_cli_and_names_cifar10_as_train_takes_it(nothing_anywhere, capsys):
    assert main(["datasets", "--data-root", str(nothing_anywhere / "mine")]) == 0
    text = capsys.readouterr().out
    names = {line.split()[0] for line in text.splitlines() if re.match(r"^\S+ +(train|test) ", line)}
    assert names == {"fashion-mnist", "mnist", "cifar10"}
    assert re.search(r"^ cifar10:$", text, re.M)
    assert "--data-root: " + str(nothing_anywhere / "mine") in text
    assert not [w for w in API_WORDS if w in text], text
    # Every name `cnnkit datasets` prints is one `cnnkit train --dataset` takes, and cifar-10 too.
    for name in names | {"cifar-10", "CIFAR10"}:
        config = resolve_config({"model": "vgg_cifar" if "cifar" in name.lower() else "lenet", "dataset": name})
        assert config["dataset"] in names


def test_train_help_lists_the_printed_dataset_names(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "fashion-mnist, mnist, cifar10" in capsys.readouterr().out
