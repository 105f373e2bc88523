"""Write your own differentiable operation and layer, check them, train with them.

Every operation in cnnkit is a ``cnnkit.autograd.Function``: a ``forward`` that computes the
result on NumPy arrays and keeps on ``ctx`` what the gradient will need, and a ``backward``
that turns the gradient of the loss with respect to the output into the gradient with
respect to each input. The autograd engine records each call and runs the backwards in
reverse order. A layer is a ``Module`` holding its ``Parameter``s whose ``forward`` applies
the Function. ``cnnkit.gradcheck`` compares the hand-written backward with finite
differences, so you know it is right before you train with it.

This script:
  1. defines Swish (x * sigmoid(x), no parameters) and ChannelScale (one learnable factor
     per channel, a Parameter), each a Function plus a thin Module;
  2. gradient-checks both, and shows gradcheck catching a wrong backward;
  3. puts them in a Sequential with built-in layers, checks the whole network, and trains it
     for a few steps on random data with loss.backward().

    python examples/custom_layer.py
"""

import numpy as np

import cnnkit
from cnnkit import nn, optim
from cnnkit.autograd import Function


def sigmoid(x):
    # 0.5 * (1 + tanh(x / 2)) equals 1 / (1 + exp(-x)) but never overflows; a Python float
    # factor keeps float32 input float32.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class SwishFunction(Function):
    """y = x * sigmoid(x);  dy/dx = s + x * s * (1 - s) = s * (1 + x * (1 - s))."""

    @staticmethod
    def forward(ctx, x):
        s = sigmoid(x)
        ctx.save_for_backward(x, s)  # backward needs both; keeping s saves recomputing it
        return x * s

    @staticmethod
    def backward(ctx, grad_out):
        x, s = ctx.saved_tensors
        # A new array: never write into grad_out (another branch may use the same one).
        return grad_out * (s * (1.0 + x * (1.0 - s)))


class Swish(nn.Module):
    """Swish / SiLU activation: y = x * sigmoid(x).

    Shape:
        any -> same.
    """

    def forward(self, x):
        return SwishFunction.apply(x)


class ChannelScaleFunction(Function):
    """y[n, c, h, w] = x[n, c, h, w] * w[c].

    dL/dx = g * w[c];  dL/dw[c] = sum over n, h, w of g * x (w[c] touches every pixel of channel c)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)  # references, not copies
        return x * w.reshape(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        gx = grad_out * w.reshape(1, -1, 1, 1) if ctx.needs_input_grad[0] else None
        gw = (grad_out * x).sum(axis=(0, 2, 3)) if ctx.needs_input_grad[1] else None
        return gx, gw


class ChannelScale(nn.Module):
    """Multiply each channel by its own learnable factor.

    Args:
        num_channels: C.

    Shape:
        (N, C, H, W) -> same.
    """

    def __init__(self, num_channels):
        super().__init__()
        self.num_channels = num_channels
        self.weight = nn.Parameter(np.ones(num_channels, np.float32))  # registered by assignment

    def extra_repr(self):
        return str(self.num_channels)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"ChannelScale({self.num_channels}): expected input (N, {self.num_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        return ChannelScaleFunction.apply(x, self.weight)


class BuggySwishFunction(SwishFunction):
    """Swish with a classic mistake: the derivative of x in x * sigmoid(x) is forgotten."""

    @staticmethod
    def backward(ctx, grad_out):
        x, s = ctx.saved_tensors
        return grad_out * (x * s * (1.0 - s))


class BuggySwish(Swish):
    def forward(self, x):
        return BuggySwishFunction.apply(x)


def check(module, x):
    """Gradient-check ``module`` on input ``x`` and print the per-tensor errors."""
    # gradcheck casts the module and x to float64, draws a random upstream gradient g and
    # compares the graph's gradients with central differences of sum(forward(x) * g); the
    # module is restored afterwards. raise_exception=False returns a report instead of raising.
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
    # The engine applies the chain rule: it calls each recorded node's backward in reverse.
    assert check(model, rng.standard_normal((2, 1, 8, 8)))

    x = cnnkit.from_numpy(rng.standard_normal((64, 1, 8, 8)).astype(np.float32))
    y = cnnkit.from_numpy(rng.integers(0, 3, size=64))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):  # memorise 64 random samples: the loss must go down
        optimizer.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert out.dtype == np.float32 and model[1].weight.grad.dtype == np.float32
    with cnnkit.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    print(f"training on random data: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps, "
          f"train accuracy {accuracy:.2f}")
    print("learned channel scales:", " ".join(f"{v:.3f}" for v in model[1].weight.data))
    assert losses[-1] < 0.5 * losses[0], "training should reduce the loss"
    print("\nall checks passed")


if __name__ == "__main__":
    main()
