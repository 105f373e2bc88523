"""cnnkit.train: ``fit`` / ``evaluate``, callbacks, history, metrics.

Example::

    from cnnkit import nn, optim, train
    history = train.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()),
                        train_loader, val_loader, epochs=5,
                        callbacks=[train.ModelCheckpoint("runs/last.safetensors")])
    print(history.history["val_accuracy"])
"""

from importlib import import_module

# Imported eagerly, not lazily: the function ``fit`` shares its name with the submodule
# ``fit.py``, and a lazy import would let the submodule shadow the function.
from .callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, write_history_csv
from .fit import TrainingDiverged, TrainingInterrupted, TrainingLoop, evaluate, fit
from .history import History

__all__ = ["fit", "evaluate", "TrainingInterrupted", "TrainingDiverged", "TrainingLoop", "History", "Callback",
           "ModelCheckpoint", "EarlyStopping", "CSVLogger", "write_history_csv", "metrics"]


def __getattr__(name):
    if name == "metrics":  # imported on first use
        return import_module(".metrics", __name__)
    raise AttributeError(f"module 'cnnkit.train' has no attribute {name!r}")
