"""Write your own layer: subclass cnnkit.nn.Module, give it forward and backward, check it.

There is no autograd in cnnkit: a layer computes its output in ``forward`` (keeping what the
gradient will need) and, in ``backward``, turns the gradient of the loss with respect to its
output into the gradient with respect to its input, adding its parameters' gradients into
``Parameter.grad`` on the way. ``cnnkit.gradcheck`` compares that hand-written backward with
finite differences, so you know it is right before you train with it.

This script:
  1. defines Swish (x * sigmoid(x), no parameters) and ChannelScale (one learnable factor
     per channel, a Parameter);
  2. gradient-checks both, and shows gradcheck catching a wrong backward;
  3. puts them in a Sequential with built-in layers, checks the whole network, and trains it
     for a few steps on random data.

    python examples/custom_layer.py
"""

import numpy as np

import cnnkit
from cnnkit import nn, optim


def sigmoid(x):
    # 0.5 * (1 + tanh(x / 2)) equals 1 / (1 + exp(-x)) but never overflows; a Python float
    # factor keeps float32 input float32.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class Swish(nn.Module):
    """Swish / SiLU activation: y = x * sigmoid(x).

    Shape:
        any -> same.
    """

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        s = sigmoid(x)
        self._cache = (x, s)  # backward needs both; keeping s saves recomputing it
        return x * s

    def backward(self, grad_out):
        x, s = self._need_cache(self._cache)  # clear error if no forward came first
        # dy/dx = s + x * s * (1 - s) = s * (1 + x * (1 - s)). A new array: never write into grad_out.
        return grad_out * (s * (1.0 + x * (1.0 - s)))


class ChannelScale(nn.Module):
    """Multiply each channel by its own learnable factor: y[n, c, h, w] = x[n, c, h, w] * w[c].

    Args:
        num_channels: C.

    Shape:
        (N, C, H, W) -> same.
    """

    def __init__(self, num_channels):
        super().__init__()
        self.num_channels = num_channels
        self.weight = nn.Parameter(np.ones(num_channels, np.float32))  # registered by assignment
        self._cache = None

    def extra_repr(self):
        return str(self.num_channels)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"ChannelScale({self.num_channels}): expected input (N, {self.num_channels}, H, W), "
                             f"got shape {x.shape}")
        self._cache = x  # a reference, not a copy
        return x * self.weight.data.reshape(1, -1, 1, 1)

    def backward(self, grad_out):
        x = self._need_cache(self._cache)
        # w[c] touches every (n, h, w) of channel c: its gradient sums over those axes.
        # accumulate_grad adds (gradients accumulate until zero_grad) and skips frozen weights.
        self.weight.accumulate_grad((grad_out * x).sum(axis=(0, 2, 3)))
        return grad_out * self.weight.data.reshape(1, -1, 1, 1)



class BuggySwish(Swish):
    """Swish with a classic mistake: the derivative of x in x * sigmoid(x) is forgotten."""

    def backward(self, grad_out):
        x, s = self._need_cache(self._cache)
        return grad_out * (x * s * (1.0 - s))


def check(module, x):
    """Gradient-check ``module`` on input ``x`` and print the per-tensor errors."""
    # gradcheck casts the module and x to float64, draws a random upstream gradient g and
    # compares backward(g) with central differences of sum(forward(x) * g); the module is
    # restored afterwards. raise_exception=False returns a report instead of raising.
    report = cnnkit.gradcheck(module, x, raise_exception=False)
    print(report)
    return report


def main():
    cnnkit.manual_seed(0)
    rng = np.random.default_rng(0)

    print("1. The new layers on their own")
    assert check(Swish(), rng.standard_normal((2, 3, 4, 4)))
    scale = ChannelScale(3)
    scale.weight.data[:] = rng.uniform(0.5, 1.5, 3)  # not all ones: a transposed gradient would show
    assert check(scale, rng.standard_normal((2, 3, 4, 4)))

    print("\n2. gradcheck catches a wrong backward")
    assert not check(BuggySwish(), rng.standard_normal((2, 3, 4, 4))), "the buggy layer should fail"

    print("\n3. The new layers inside a network")
    model = nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),
        ChannelScale(8),
        Swish(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )
    # Sequential applies the chain rule: its backward calls each child's backward in reverse.
    assert check(model, rng.standard_normal((2, 1, 8, 8)))

    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):  # memorise 64 random samples: the loss must go down
        optimizer.zero_grad()
        out = model(x)
        losses.append(loss_fn(out, y))
        model.backward(loss_fn.backward())
        optimizer.step()
    assert out.dtype == np.float32 and model[1].weight.grad.dtype == np.float32
    accuracy = float((model(x).argmax(axis=1) == y).mean())
    print(f"training on random data: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps, "
          f"train accuracy {accuracy:.2f}")
    print("learned channel scales:", " ".join(f"{v:.3f}" for v in model[1].weight.data))
    assert losses[-1] < 0.5 * losses[0], "training should reduce the loss"
    print("\nall checks passed")


if __name__ == "__main__":
    main()
