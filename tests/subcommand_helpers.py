"""Helpers shared by the tests of the `cnnkit predict` and `cnnkit finetune` subcommands."""

from __future__ import annotations

import argparse

from cnnkit.models.pretrained import PretrainedWeightsError, pretrained_weights_path


def weights_installed() -> bool:
    """Whether the pretrained EfficientNet-Lite0 weights package is installed."""
    try:
        pretrained_weights_path("efficientnet_lite0")
        return True
    except PretrainedWeightsError:
        return False


def run_subcommand(add_parser, argv: list[str]) -> int:
    """Parse ``argv`` with a parser holding only the subcommand ``add_parser`` registers, run it."""
    parser = argparse.ArgumentParser(prog="cnnkit")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)
