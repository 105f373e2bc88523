"""One life of the resume soak test (not a test module): ``python soak_child.py FOLDER PLAN``.

Trains the tiny model of train_helpers into FOLDER (last / best checkpoints and history.csv),
resuming from FOLDER/last.safetensors when it exists, exactly as ``cnnkit train --resume`` does.
PLAN says how this life ends early (the test's own hooks, nothing in the library):
``none``; ``write:K`` -- SIGKILL right after the K-th checkpoint write of this life (between
two end-of-epoch writes, or after the last one); ``rename:K`` -- SIGKILL just before the K-th
atomic rename (a finished temporary file is left behind, the target untouched).
Timed SIGKILL / SIGINT come from the parent.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from cnnkit.io import atomic
from cnnkit.train import CSVLogger, ModelCheckpoint, TrainingInterrupted, TrainingLoop, fit
from train_helpers import tiny_setup

N, EPOCHS, BATCH = 192, 5, 16


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(plan: str) -> None:
    kind, _, k = plan.partition(":")
    if kind == "none":
        return
    target = int(k)
    count = {"n": 0}
    if kind == "write":
        real = TrainingLoop.save_checkpoint

        def save_then_maybe_die(self, path, meta=None):
            out = real(self, path, meta)
            count["n"] += 1
            if count["n"] == target:
                _die()
            return out

        TrainingLoop.save_checkpoint = save_then_maybe_die
    elif kind == "rename":
        real_replace = atomic.os.replace

        class _Os:  # atomic.os with a replace that dies on the K-th call
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst):
                count["n"] += 1
                if count["n"] == target:
                    _die()
                return real_replace(src, dst)

        atomic.os = _Os()


def main(folder: str, plan: str) -> int:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out)
    _install(plan)
    model, loss, opt, sched, train, val = tiny_setup(n=N, batch_size=BATCH, epochs=EPOCHS)
    last = out / "last.safetensors"
    callbacks = [ModelCheckpoint(last),
                 ModelCheckpoint(out / "best.safetensors", monitor="val_loss", save_best_only=True),
                 CSVLogger(out / "history.csv")]
    try:
        fit(model, loss, opt, train, val, epochs=EPOCHS, scheduler=sched, callbacks=callbacks, verbose=0,
            resume=last if last.is_file() else None)
    except TrainingInterrupted:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
