"""The training job behind ``cnnkit train``: data, model, optimizer, schedule, callbacks,
checkpoints, final test evaluation, metrics.json and plots in one output folder.

The folder is the unit of work: ``run.json`` holds the resolved settings, ``last.safetensors``
the resumable state after every epoch (or at a Ctrl-C), so ``cnnkit train --out DIR --resume``
rebuilds the very same run and continues it bit-for-bit.

Files written into ``out``: run.json, last.safetensors, best.safetensors (best validation
accuracy; without validation data, the last epoch), history.csv, metrics.json, curves.png,
confusion_matrix.png, predictions.png, filters.png.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import presets

RUN_FILE = "run.json"
LAST, BEST = "last.safetensors", "best.safetensors"
# Every file a run writes into its folder: a folder holding any of them is someone's run,
# replaced only with --overwrite (or continued with --resume).
RUN_OUTPUTS = (RUN_FILE, LAST, BEST, "history.csv", "metrics.json", "curves.png", "confusion_matrix.png",
               "predictions.png", "filters.png")
# Settings that define a run; `--resume` refuses to change them (the result would not be the
# continuation of the same run).
RUN_KEYS = ("model", "dataset", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum",
            "scheduler", "augment", "label_smoothing", "val_fraction", "seed", "limit_train", "limit_test")


def resolve_config(given: dict) -> dict:
    """Fill the settings not given (None) from the model's preset.

    Args:
        given: ``model``, ``dataset`` and any of ``RUN_KEYS`` (None = not given).

    Returns:
        The complete settings (JSON-able).
    """
    if not given.get("model"):
        raise ValueError("cnnkit train: --model is required (see `cnnkit train --help` for the list)")
    if not given.get("dataset"):
        raise ValueError(f"cnnkit train: --dataset is required; available: {', '.join(presets.DATASETS)}")
    from .models import names

    if given["model"] not in names():
        raise ValueError(f"unknown model {given['model']!r}; available models: {', '.join(names())}")
    dataset, _ = presets.dataset_info(given["dataset"])
    presets.check_model_fits_dataset(given["model"], dataset)
    config = presets.preset_for(given["model"])
    config.update({k: v for k, v in given.items() if v is not None})
    config["dataset"] = dataset
    config.setdefault("seed", 0)
    config.setdefault("limit_train", None)
    config.setdefault("limit_test", None)
    config = {k: config.get(k) for k in RUN_KEYS}
    validate_config(config)
    return config


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and np.isfinite(value)


# key -> (integer?, lowest, highest, lowest allowed?, highest allowed?, None allowed?)
_RANGES = {
    "epochs": (True, 1, None, True, True, False),
    "batch_size": (True, 1, None, True, True, False),
    "lr": (False, 0, None, False, True, False),
    "weight_decay": (False, 0, None, True, True, True),
    "momentum": (False, 0, 1, True, False, True),
    "label_smoothing": (False, 0, 1, True, False, False),
    "val_fraction": (False, 0, 1, True, False, False),
    "seed": (True, 0, 2 ** 63 - 1, True, True, False),
    "limit_train": (True, 1, None, True, True, True),
    "limit_test": (True, 1, None, True, True, True),
}


def validate_config(config: dict, source: str | None = None) -> None:
    """Check every setting of a run before anything is written or loaded.

    Args:
        config: the complete settings (RUN_KEYS).
        source: the file the settings come from (a resumed run's run.json), or None for
            command-line arguments.

    Raises:
        ValueError: one line naming the argument (and the file), the allowed range and the value.
    """
    where = f"{source}: " if source else ""
    for key, (integer, low, high, low_ok, high_ok, none_ok) in _RANGES.items():
        value = config.get(key)
        flag = "--" + key.replace("_", "-")
        if value is None and none_ok:
            continue
        kind = "an integer " if integer else ""
        expected = f"{kind}{'>=' if low_ok else '>'} {low}" if high is None else \
            f"{kind}in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
        if not _number(value, integer) or (value < low if low_ok else value <= low) or \
                (high is not None and (value > high if high_ok else value >= high)):
            raise ValueError(f"{where}{flag} must be {expected}, got {value!r}")
    for key, allowed in (("scheduler", ("onecycle", "cosine", "step", "none")),
                         ("optimizer", ("sgd", "adam", "adamw", "rmsprop"))):
        if config.get(key) not in allowed:
            raise ValueError(f"{where}--{key} must be {', '.join(allowed)}, got {config.get(key)!r}")
    if not isinstance(config.get("augment"), bool):
        raise ValueError(f"{where}--augment must be true or false, got {config.get('augment')!r}")
    from .models import names

    if config.get("model") not in names():
        raise ValueError(f"{where}unknown model {config.get('model')!r}; available models: {', '.join(names())}")
    presets.dataset_info(config.get("dataset"))


def check_out_folder(out: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that would lose someone's data; writes nothing.

    Args:
        out: the ``--out`` folder.
        resume: ``--resume`` (the folder must hold a run).
        overwrite: ``--overwrite`` (replacing the run in the folder is wanted).

    Raises:
        ValueError / NotADirectoryError: one line naming the folder and the flags that apply.
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run in "
                         f"{out} or replace it, not both")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, expected a folder for the run's outputs")
    if resume or overwrite or not out.is_dir():
        return
    present = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if present:
        raise ValueError(f"--out {out} already holds a run ({', '.join(present[:4])}"
                         f"{', ...' if len(present) > 4 else ''}); pass --resume to continue it, --overwrite to "
                         "replace it, or choose another folder")


def resume_config(out: str | os.PathLike, given: dict) -> dict:
    """The settings saved in ``out/run.json``; explicitly given ones must agree with them."""
    path = Path(out) / RUN_FILE
    if path.is_dir():
        raise IsADirectoryError(f"cannot resume: {path} is a folder, expected the run's settings file")
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (no run was started in {out})")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"cannot resume: {path} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(saved, dict) or any(k not in saved for k in RUN_KEYS):
        missing = [k for k in RUN_KEYS if not isinstance(saved, dict) or k not in saved]
        raise ValueError(f"cannot resume: {path} must be an object with the run's settings, missing "
                         f"{', '.join(missing[:6])}")
    validate_config(saved, str(path))
    given = {k: v for k, v in given.items() if v is not None}
    if "dataset" in given:
        given["dataset"] = presets.dataset_info(given["dataset"])[0]
    clashes = [f"--{k.replace('_', '-')} {given[k]} (the run has {saved.get(k)})"
               for k in RUN_KEYS if k in given and given[k] != saved.get(k)]
    if clashes:
        raise ValueError("cannot resume with different settings: " + "; ".join(clashes)
                         + f". Resume with the run's own settings (from {path}) or start a new --out folder")
    return saved


# ---------------------------------------------------------------------------- building blocks
def _subset(dataset, n: int | None, seed: int, salt: int):
    """A seeded random subset of ``n`` samples (all when n is None or too large)."""
    from .data import Subset

    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ValueError(f"--limit-train / --limit-test must be >= 1, got {n}")
    idx = np.sort(np.random.default_rng([seed, salt]).permutation(len(dataset))[:n])
    return Subset(dataset, idx)


def build_data(config: dict, data_root=None) -> dict:
    """Datasets, loaders and preprocessing of a run: ``train``, ``val`` (or None), ``test``
    loaders, ``classes``, ``input_shape`` [C, H, W], ``normalize`` {mean, std}."""
    from .data import DataLoader, random_split
    from .data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

    name, info = presets.dataset_info(config["dataset"])
    seed = int(config["seed"])
    full_train, test = info.load(True, data_root), info.load(False, data_root)
    classes = list(full_train.classes)
    train = _subset(full_train, config.get("limit_train"), seed, 1)
    test = _subset(test, config.get("limit_test"), seed, 2)
    val = None
    frac = float(config["val_fraction"])
    if frac > 0:
        n_val = max(1, int(round(len(train) * frac)))
        if n_val >= len(train):
            raise ValueError(f"--val-fraction {frac} leaves no training data out of {len(train)} samples")
        train, val = random_split(train, [len(train) - n_val, n_val], seed=seed)
    x0, _ = test.get_batch([0]) if hasattr(test, "get_batch") else (test[0][0][None], None)
    input_shape = [int(v) for v in x0.shape[1:]]
    norm = Normalize(info.mean, info.std)
    train_tf = [norm]
    # Statistics of (a sample of) the training images, kept in the checkpoints: `cnnkit predict`
    # warns about inputs far from them (e.g. a dark item on white for a light-on-black dataset).
    from .predict import input_statistics

    sample = np.sort(np.random.default_rng([seed, 3]).permutation(len(full_train))[:2000])
    stats = input_statistics(full_train.get_batch(sample)[0])
    if config["augment"]:
        aug = [RandomCrop(input_shape[1:], padding=info.crop_padding)]
        if info.hflip:
            aug.append(RandomHorizontalFlip())
        train_tf = aug + train_tf  # crop / flip the [0, 1] images, then normalise
    eval_bs = max(256, int(config["batch_size"]))
    return {
        "train": DataLoader(train, batch_size=int(config["batch_size"]), shuffle=True, seed=seed,
                            transform=Compose(train_tf)),
        "val": None if val is None else DataLoader(val, batch_size=eval_bs, transform=norm),
        "test": DataLoader(test, batch_size=eval_bs, transform=norm),
        "test_dataset": test,
        "normalize_fn": norm,
        "classes": classes,
        "input_shape": input_shape,
        "normalize": {"mean": list(info.mean), "std": list(info.std)},
        "input_stats": stats,
    }


def build_model(name: str, num_classes: int, input_shape: list[int]):
    """``cnnkit.models.create`` with the class count, channels and size the builder accepts."""
    from .models import create, get_builder

    params = inspect.signature(get_builder(name)).parameters
    kwargs: dict[str, Any] = {}
    for key, value in (("num_classes", num_classes), ("in_channels", input_shape[0]),
                       ("input_size", input_shape[1])):
        if key in params:
            kwargs[key] = value
    return create(name, **kwargs)


def build_optimizer(config: dict, params):
    from . import optim

    kind, lr, wd = config["optimizer"], float(config["lr"]), config.get("weight_decay")
    extra = {} if wd is None else {"weight_decay": float(wd)}
    if kind == "sgd":
        momentum = float(config.get("momentum") or 0.0)
        return optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, **extra)
    if kind == "adam":
        return optim.Adam(params, lr=lr, **extra)
    if kind == "rmsprop":
        return optim.RMSprop(params, lr=lr, **extra)
    return optim.AdamW(params, lr=lr, **extra)


def build_scheduler(config: dict, optimizer, steps_per_epoch: int):
    from .optim import lr_scheduler as sch

    kind, epochs = config["scheduler"], int(config["epochs"])
    if kind == "onecycle":
        return sch.OneCycleLR(optimizer, max_lr=float(config["lr"]), total_steps=max(1, epochs * steps_per_epoch))
    if kind == "cosine":
        return sch.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if kind == "step":
        return sch.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    return None


# ---------------------------------------------------------------------------- the job
def run_train(config: dict, out: str | os.PathLike, resume: bool = False, data_root=None,
              verbose: int = 1, print_fn: Callable[[str], Any] = print, overwrite: bool = False) -> dict:
    """Train, checkpoint, test and plot one run into ``out``.

    Args:
        config: complete settings (``resolve_config`` / ``resume_config``).
        out: the output folder (created).
        resume: continue from ``out/last.safetensors`` when it exists.
        data_root: extra folder to look for datasets in.
        overwrite: replace a run already in ``out`` (its output files are deleted once the new
            run's settings, data and model are ready). Without it or ``resume``, a folder
            holding a run is refused.
        verbose: passed to ``fit``.
        print_fn: where progress lines go.

    Returns:
        The metrics dict written to ``metrics.json``; ``{"interrupted": True, ...}`` when the run
        was stopped by Ctrl-C (a resumable checkpoint was saved).
    """
    from . import distributed, manual_seed, nn
    from .io.atomic import atomic_write_text, remove_stale_temps
    from .train import CSVLogger, ModelCheckpoint, TrainingInterrupted, fit

    t_start = time.perf_counter()
    out = Path(out)
    # Everything that can fail on the user's input fails before the folder is touched.
    validate_config(config)
    comm = distributed.get_comm()  # None unless started by mpiexec with several ranks
    is_root = comm is None or comm.is_root
    if not is_root:
        print_fn = _silent  # under mpiexec only rank 0 prints and writes files
    if is_root:
        check_out_folder(out, resume, overwrite)
        if resume and out.is_dir():
            remove_stale_temps(out)  # left by a run killed in the middle of a write
    done = _completed_run(out, config) if resume else None
    if done is not None:
        print_fn(f"{out} holds a complete run ({done['epochs_trained']}/{config['epochs']} epochs, test accuracy "
                 f"{100 * done['test_accuracy']:.2f}%): nothing to resume, no file changed. "
                 f"See {out / 'metrics.json'}, or: cnnkit evaluate {out}")
        return {**done, "already_complete": True}
    manual_seed(int(config["seed"]))
    d = build_data(config, data_root)
    model = build_model(config["model"], len(d["classes"]), d["input_shape"])
    if is_root:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)  # left by a run killed in the middle of a write
        if overwrite:
            for name in RUN_OUTPUTS:
                if (out / name).is_file():
                    (out / name).unlink()
        if not (resume and (out / RUN_FILE).is_file()):
            atomic_write_text(out / RUN_FILE, json.dumps(config, indent=2) + "\n")
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(config, optimizer, len(d["train"]))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(config["label_smoothing"]))
    meta = {"classes": d["classes"], "input_shape": d["input_shape"], "normalize": d["normalize"],
            "input_stats": d["input_stats"], "dataset": config["dataset"], "run": config}
    has_val = d["val"] is not None
    callbacks = [
        ModelCheckpoint(out / LAST, meta=meta),
        ModelCheckpoint(out / BEST, monitor="val_accuracy" if has_val else "loss",
                        save_best_only=True, meta=meta),
        CSVLogger(out / "history.csv"),
    ]
    last = out / LAST
    has_last = last.is_file() if comm is None else comm.broadcast_json(last.is_file())  # rank 0's folder
    resume_from = last if resume and has_last else None
    if resume and resume_from is None:
        print_fn(f"nothing to resume in {out} (no {LAST}); starting the run from the beginning")
    if verbose:
        print_fn(f"training {config['model']} ({model.num_parameters():,} parameters) on {config['dataset']}: "
                 f"{len(d['train'].dataset)} train / {len(d['val'].dataset) if has_val else 0} val / "
                 f"{len(d['test'].dataset)} test images, {config['epochs']} epochs, batch {config['batch_size']}, "
                 f"{config['optimizer']} lr {config['lr']}, schedule {config['scheduler']}, "
                 f"augment {'on' if config['augment'] else 'off'}, seed {config['seed']}"
                 + (f"; resuming from {resume_from}" if resume_from else ""))
        if comm is not None:
            print_fn(f"data-parallel: {distributed.describe()}; {distributed.threads_per_rank()} thread(s) per rank, "
                     f"global batch {config['batch_size']} = about {int(config['batch_size']) // comm.size} per rank")
    try:
        history = fit(model, loss_fn, optimizer, d["train"], d["val"], epochs=int(config["epochs"]),
                      scheduler=scheduler, callbacks=callbacks, verbose=verbose, resume=resume_from,
                      print_fn=print_fn)
    except TrainingInterrupted as exc:
        where = exc.checkpoints[0] if exc.checkpoints else out / LAST
        print_fn(f"Interrupted in epoch {exc.epoch} after {exc.batch} batches; the state is saved in {where}.")
        print_fn(f"Resume with: cnnkit train --out {out} --resume")
        return {"interrupted": True, "epoch": exc.epoch, "batch": exc.batch, "checkpoint": str(where)}
    if comm is not None and not comm.is_root:
        return {"rank": comm.rank}
    return _finish(config, out, model, loss_fn, history, d, callbacks[1], t_start, print_fn, verbose)


def _silent(*args, **kwargs) -> None:
    return None


def _completed_run(out: Path, config: dict) -> dict | None:
    """The metrics of the run in ``out`` when it is finished (every epoch trained, tested:
    metrics.json matches last.safetensors), else None."""
    from .io.checkpoint import load_checkpoint

    metrics_path, last = out / "metrics.json", out / LAST
    if not (metrics_path.is_file() and last.is_file()):
        return None
    state = (load_checkpoint(last).meta or {}).get("train_state") or {}
    metrics = json.loads(metrics_path.read_text())
    done = int(state.get("epoch", -1))
    if int(state.get("batch", 0)) or done < int(config["epochs"]) or metrics.get("epochs_trained") != done:
        return None
    return metrics


def _finish(config, out: Path, model, loss_fn, history, d, best_cb, t_start, print_fn, verbose=1) -> dict:
    """Test the best checkpoint's weights; write metrics.json and the plots; print the result."""
    from . import plots
    from .io.atomic import atomic_write_text
    from .io.checkpoint import load_checkpoint
    from .train import evaluate, write_history_csv

    used = LAST
    if (out / BEST).is_file():
        model.load_state_dict(load_checkpoint(out / BEST).state_dict)
        used = BEST
    if len(history):
        write_history_csv(history, out / "history.csv")
    classes = d["classes"]
    result = evaluate(model, d["test"], loss_fn, num_classes=len(classes), progress="test" if verbose else None)
    cm = np.asarray(result["confusion_matrix"])
    per_class = {name: {k: result[k][i] for k in ("precision", "recall", "f1", "support") if k in result}
                 for i, name in enumerate(classes)}
    metrics = {
        "test_accuracy": result["accuracy"], "test_loss": result["loss"],
        "test_samples": result["num_samples"],
        "macro_precision": result.get("macro_precision"), "macro_recall": result.get("macro_recall"),
        "macro_f1": result.get("macro_f1"), "per_class": per_class, "confusion_matrix": cm.tolist(),
        "classes": classes, "checkpoint": used, "best_epoch": best_cb.best_epoch,
        "epochs_trained": history.epochs[-1] if len(history) else 0,
        "train_seconds": float(np.nansum(history.history.get("time", []))),
        "wall_seconds_this_invocation": time.perf_counter() - t_start,
        "num_parameters": model.num_parameters(), "config": config,
        "history": {k: v for k, v in history.history.items()},
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if len(history):
        plots.plot_history(history, out / "curves.png")
    plots.plot_confusion_matrix(cm, classes, out / "confusion_matrix.png")
    _plot_predictions(model, d, out / "predictions.png")
    weight = plots.first_conv_weight(model)
    if weight is not None:
        plots.plot_filters(weight, out / "filters.png")
    correct = int(round(result["accuracy"] * result["num_samples"]))
    print_fn(f"wrote {out}: {', '.join(name for name in RUN_OUTPUTS[1:] if (out / name).is_file())}")
    print_fn(f"test accuracy: {100 * result['accuracy']:.2f}% ({correct}/{result['num_samples']}), "
             f"test loss {result['loss']:.4f} [{used}]")
    return metrics


def _plot_predictions(model, d, path, n: int = 25) -> None:
    from . import plots

    test = d["test_dataset"]
    x, y = test.get_batch(np.arange(min(n, len(test))))
    model.eval()
    preds = model(d["normalize_fn"](x)).argmax(axis=1)
    plots.plot_predictions(x, y, preds, d["classes"], path, max_images=n)
