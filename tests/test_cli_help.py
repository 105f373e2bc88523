"""`cnnkit --help` and the documents say the same things: every option explained, every
documented command line valid, every option documented; `--optimizer rmsprop`."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from cnnkit.cli import build_parser, main

from cli_helpers import train_tiny, write_light_on_dark

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_subcommand_has_help_text():
    missing = []
    for name, parser in _subcommands().items():
        if not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help and action.help.strip()) or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_subcommand_is_in_the_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in _subcommands():
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), name  # listed with its one-line help


def _cli_lines(markdown: str) -> list[str]:
    """The `cnnkit ...` command lines of the markdown's shell code blocks (comments stripped)."""
    lines, fence = [], None
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else (line[3:].strip() or "text")
            continue
        line = line.split(" #")[0].strip().removeprefix("$ ")
        if fence in ("bash", "sh", "console", "text") and line.startswith("cnnkit "):
            lines.append(line)
    return lines


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md"])
def test_documented_command_lines_parse(doc):
    """Every `cnnkit ...` line in the document is accepted by the parser as written."""
    lines = _cli_lines((ROOT / doc).read_text())
    assert lines, doc
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)[1:]
        if "--help" in argv or "--version" in argv:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc}: `{line}` is not a valid command line")


def test_the_cli_reference_documents_every_option():
    """docs/cli.md names every option of every subcommand, and no option that does not exist."""
    text = (ROOT / "docs" / "cli.md").read_text()
    known = set()
    for name, parser in _subcommands().items():
        assert f"cnnkit {name}" in text, name
        for action in parser._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    known.add(opt)
                    assert opt in text, f"{name} {opt} is not in docs/cli.md"
    known |= {f"--no-{o[2:]}" for o in known}  # BooleanOptionalAction's negative form
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text))
    assert documented - known - {"--help", "--version"} == set()


def test_rmsprop_is_an_optimizer_choice(tmp_path, monkeypatch, capsys):
    write_light_on_dark(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    assert train_tiny(tmp_path / "run", "--optimizer", "rmsprop", "--lr", "1e-3") == 0
    assert "rmsprop lr 0.001" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["optimizer"] == "rmsprop"
    from cnnkit.io.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "last.safetensors").optimizer_state
    assert any("square_avg" in s for s in state["state"].values())  # RMSprop's running average
