"""The ``cnnkit`` command.

Subcommands::

    cnnkit train --model fashion_cnn --dataset fashion-mnist --out runs/fmnist   # preset defaults
    cnnkit train --out runs/fmnist --resume                                     # continue a run
    cnnkit evaluate runs/fmnist [--dataset fashion-mnist | --data DIR]          # (cnnkit.evaluate_cli)
    cnnkit summary fashion_cnn [--input-shape 1,28,28]
    cnnkit datasets
    cnnkit predict ... / cnnkit finetune ...   (cnnkit.predict / cnnkit.finetune)

docs/cli.md is the full reference; tests/test_cli_help.py keeps it and ``--help`` in step.

Errors a user can cause (unknown model or dataset, missing files, bad settings) are printed
as one ``cnnkit: error: ...`` line with exit code 2, not a traceback (set CNNKIT_DEBUG=1 for
the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from .info import VersionAction

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("onecycle", "cosine", "step", "none")

EXIT_INTERRUPTED = 130  # the shell's code for "stopped by Ctrl-C"


class UserError(Exception):
    """An error caused by the command's input: printed without a traceback."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,28,28, got {text!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with positive sizes, got {text!r}")
    from .io.limits import check_input_shape

    try:
        return check_input_shape(dims, "the shape")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_train(sub) -> None:
    from .models import names
    from .presets import DATASETS, DEFAULT_PRESET, MODEL_PRESETS

    presets_text = "; ".join(
        f"{m}: " + ", ".join(f"{k}={v}" for k, v in p.items()) for m, p in MODEL_PRESETS.items())
    p = sub.add_parser(
        "train", help="train a zoo model on a dataset (checkpoints, metrics, plots into --out)",
        description="Train a model. Settings not given come from the model's preset "
                    f"({presets_text}; other models: "
                    + ", ".join(f"{k}={v}" for k, v in DEFAULT_PRESET.items()) + ").",
    )
    p.add_argument("--model", help=f"zoo model: {', '.join(names())}")
    p.add_argument("--dataset", help=f"dataset: {', '.join(DATASETS)}")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (checkpoints, run.json, metrics.json, history.csv, PNG plots)")
    p.add_argument("--epochs", type=int, metavar="N", help="number of training epochs")
    p.add_argument("--batch-size", type=int, metavar="N", help="training images per step")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="sgd (with --momentum, Nesterov), adam, adamw (decoupled weight decay) or rmsprop")
    p.add_argument("--lr", type=float, help="learning rate (the peak lr for --scheduler onecycle)")
    p.add_argument("--weight-decay", type=float, metavar="W",
                   help="L2 penalty (decoupled for adamw); default: the preset's, else the optimizer's own")
    p.add_argument("--momentum", type=float, help="SGD momentum (Nesterov when > 0); other optimizers ignore it")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="learning-rate schedule: onecycle (per step, warm-up then anneal), cosine (per "
                        "epoch), step (x0.1 every third of the epochs) or none (constant)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops (+ horizontal flips where they keep the label)")
    p.add_argument("--label-smoothing", type=float, metavar="EPS",
                   help="cross-entropy label smoothing in [0, 1) (0: none)")
    p.add_argument("--val-fraction", type=float, help="share of the training set held out for validation")
    p.add_argument("--seed", type=int, help="seed of everything random (default 0)")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on a random subset of N images (quick tests)")
    p.add_argument("--limit-test", type=int, metavar="N", help="test on a random subset of N images")
    add_data_root(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, such a folder is refused)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from . import runner
    from .distributed.comm import on_root

    given = {k: getattr(args, k, None) for k in runner.RUN_KEYS}
    # Under mpiexec rank 0 reads the run folder and hands the settings to the other ranks.
    config = on_root(lambda: runner.resume_config(args.out, given) if args.resume
                     else runner.resolve_config(given))
    result = runner.run_train(config, args.out, resume=args.resume, data_root=args.data_root,
                              verbose=0 if args.quiet else 1, overwrite=args.overwrite)
    return EXIT_INTERRUPTED if result.get("interrupted") else 0


def add_data_root(p) -> None:
    """The ``--data-root DIR`` option of the commands that read built-in datasets."""
    p.add_argument("--data-root", metavar="DIR",
                   help="extra folder to look for datasets in, first (also: $CNNKIT_DATA)")


def _add_summary(sub) -> None:
    from .models import names

    p = sub.add_parser("summary", help="layer table of a zoo model (output shapes, parameter counts)",
                       description="Print a zoo model's layers with their output shapes and parameter "
                                   "counts for one input of --input-shape.")
    p.add_argument("name", help=f"zoo model: {', '.join(names())}")
    p.add_argument("--input-shape", type=_shape, default=None,
                   help="C,H,W of one input (default 1,28,28; 3,224,224 for ImageNet models)")
    p.add_argument("--num-classes", type=int, metavar="K",
                   help="output classes (default 10; 1000 for 224x224 inputs)")
    p.set_defaults(func=_cmd_summary)


_IMAGENET_MODELS = ("vgg", "resnet", "squeezenet", "efficientnet")


def _cmd_summary(args) -> int:
    from .io.limits import MAX_SUMMARY_CLASSES, MAX_SUMMARY_PIXELS
    from .models import names
    from .runner import build_model

    if args.name not in names():
        raise UserError(f"unknown model {args.name!r}; available models: {', '.join(names())}")
    shape = args.input_shape
    if shape is None:
        shape = (3, 224, 224) if args.name.startswith(_IMAGENET_MODELS) else (1, 28, 28)
    if shape[1] * shape[2] > MAX_SUMMARY_PIXELS:
        raise UserError(f"--input-shape {','.join(map(str, shape))}: summary runs one image through the model, "
                        f"at most {MAX_SUMMARY_PIXELS} pixels (H*W), got {shape[1] * shape[2]}")
    if args.num_classes is not None and not 1 <= args.num_classes <= MAX_SUMMARY_CLASSES:
        raise UserError(f"--num-classes must be in [1, {MAX_SUMMARY_CLASSES}], got {args.num_classes}")
    if args.num_classes is None:
        model = build_model(args.name, 1000 if shape[1:] == (224, 224) else 10, list(shape))
    else:
        model = build_model(args.name, args.num_classes, list(shape))
    model.summary(shape)
    return 0


def _add_datasets(sub) -> None:
    p = sub.add_parser(
        "datasets", help="which datasets are found where",
        description="List the built-in datasets (by the names --dataset takes), the folder each split "
                    "is read from, and every place cnnkit looks, in order. A dataset found nowhere is "
                    "downloaded by `cnnkit train` / `cnnkit evaluate` into the cache folder shown.")
    add_data_root(p)
    p.set_defaults(func=_cmd_datasets)


def _cmd_datasets(args) -> int:
    from .data import datasets_report

    print(datasets_report(args.data_root))
    return 0


#: Subcommands that run a network, hence take ``--threads``.
_COMPUTING_COMMANDS = ("train", "evaluate", "predict", "finetune")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkit", description="Convolutional neural networks from scratch on NumPy.")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import evaluate_cli  # imports this module's add_data_root

    _add_train(sub)
    evaluate_cli.add_parser(sub)
    _add_summary(sub)
    _add_datasets(sub)
    for module in ("predict", "finetune", "info"):
        try:
            mod = import_module(f"cnnkit.{module}")
        except ImportError as exc:
            if exc.name is not None and exc.name != f"cnnkit.{module}":
                raise
            continue  # not written yet; the other subcommands still work
        mod.add_parser(sub)
    for name in _COMPUTING_COMMANDS:
        if name in sub.choices:
            sub.choices[name].add_argument(
                "--threads", type=_positive_int, metavar="N",
                help="threads to compute on (default: $CNNKIT_NUM_THREADS, else all CPUs this process may use)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``cnnkit`` command; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "threads", None) is not None:
            from .nn._parallel import set_num_threads

            set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cnnkit: interrupted", file=sys.stderr)
        _end_mpi_job(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`cnnkit datasets | head`): not an error of ours. Point stdout
        # at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UserError, ValueError, KeyError, OSError) as exc:
        if os.environ.get("CNNKIT_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        message = getattr(exc, "cli_message", None) or message  # e.g. a dataset not found
        if not _quiet_rank(exc):
            print(f"cnnkit: error: {message}", file=sys.stderr)
        _end_mpi_job(2)
        return 2


def _quiet_rank(exc) -> bool:
    # Under mpiexec an error rank 0 met and shared with the others is printed by rank 0 only.
    from .distributed.comm import FailedOnRoot

    return isinstance(exc, FailedOnRoot)


def _end_mpi_job(code: int) -> None:
    # Under mpiexec the other ranks may be waiting for this one: end them all (MPI_Abort).
    from .distributed.comm import abort_job

    abort_job(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
