"""cnnkit.optim: optimizers and learning-rate schedulers with PyTorch's names, defaults,
update formulas and state_dict layout.

    opt = cnnkit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = cnnkit.optim.StepLR(opt, step_size=10)
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        sched.step()
"""

from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .lr_scheduler import (CosineAnnealingLR, ExponentialLR, LRScheduler, MultiStepLR, OneCycleLR,
                           ReduceLROnPlateau, StepLR)
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad", "lr_scheduler",
           "LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau"]
