"""Run by tests/test_distributed.py under ``mpiexec`` (and in a single process): trains a small
model on synthetic data with fit() and saves every rank's weights after every step."""

import json
import sys

import numpy as np

import cnnkit
from cnnkit import nn, optim
from cnnkit.data import ArrayDataset, DataLoader
from cnnkit.distributed import rank
from cnnkit.train import Callback, ModelCheckpoint, TrainingInterrupted, fit


def build(kind: str):
    if kind == "plain":  # no BatchNorm, no Dropout: one process and N ranks take the same steps
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(4 * 4 * 4, 3))
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 4 * 4, 3))


class Record(Callback):
    """Keeps a copy of the weights (and buffers) after every step."""

    def __init__(self, stop_at=None, fail_at=None):
        self.steps, self.stop_at, self.fail_at = [], stop_at, fail_at

    def on_batch_end(self, batch, logs=None):
        self.steps.append(np.concatenate([v.reshape(-1).astype(np.float32)
                                          for v in self.loop.model.state_dict().values()
                                          if v.dtype.kind == "f"]))
        if self.stop_at is not None and len(self.steps) == self.stop_at[0] and rank() == self.stop_at[1]:
            self.loop._interrupt.requested = True  # as a Ctrl-C that reached this rank only
        if self.fail_at is not None and len(self.steps) == self.fail_at[0] and rank() == self.fail_at[1]:
            raise RuntimeError("injected failure")


def main(args):
    out, kind, epochs = args["out"], args["kind"], args["epochs"]
    cnnkit.manual_seed(0)
    g = np.random.default_rng(1)
    x = g.standard_normal((args["samples"], 2, 8, 8)).astype(np.float32)
    y = g.integers(0, 3, args["samples"])
    model = build(kind)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loader = DataLoader(ArrayDataset(x, y), batch_size=args["batch"], shuffle=True, seed=3)
    val = DataLoader(ArrayDataset(x[:21], y[:21]), batch_size=8)
    rec = Record(stop_at=args.get("stop_at"), fail_at=args.get("fail_at"))
    callbacks = [rec]
    if args.get("checkpoint"):
        callbacks.append(ModelCheckpoint(args["checkpoint"]))
    status = "done"
    try:
        history = fit(model, nn.CrossEntropyLoss(), opt, loader, val, epochs=epochs, callbacks=callbacks,
                      verbose=0, resume=args.get("resume"))
        logs = {k: v for k, v in history.history.items() if k != "time" and k != "images_per_sec"}
    except TrainingInterrupted:
        status, logs = "interrupted", {}
    np.save(f"{out}.rank{rank()}.npy", np.stack(rec.steps) if rec.steps else np.zeros((0, 0), np.float32))
    with open(f"{out}.rank{rank()}.json", "w") as f:
        json.dump({"status": status, "logs": logs}, f)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
