"""cnnkit.optim: optimizers and learning-rate schedulers with PyTorch's names, defaults,
update formulas and state_dict layout.

    opt = cnnkit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = cnnkit.optim.StepLR(opt, step_size=10)
    ...; opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(); sched.step()
"""

from . import lr_scheduler
from .adam import Adam, AdamW
from .lr_scheduler import (CosineAnnealingLR, ExponentialLR, LRScheduler, MultiStepLR, OneCycleLR,
                           ReduceLROnPlateau, StepLR)
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "lr_scheduler", "LRScheduler", "StepLR",
           "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau"]
