"""Sequential, Concat, Residual: list behaviour, chain rule, PyTorch parity, needs_input_grad."""

from collections import OrderedDict

import numpy as np
import pytest
from float32_tolerance import assert_float32_close

import cnnkit
from cnnkit.gradient_check import gradcheck

import graph_helpers
from cnnkit.nn import (BatchNorm1d, Concat, Dropout, Identity, Linear, Module, ReLU, Residual, Sequential,
                       Sigmoid, Tanh)

RTOL, ATOL = 1e-4, 1e-5


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


class Spy(Module):
    """Identity that records how it was called (to test what containers skip)."""

    def __init__(self):
        super().__init__()
        self.backward_calls = 0
        self.flags_seen = []

    def forward(self, x):
        return x

    def backward(self, grad_out):
        self.backward_calls += 1
        self.flags_seen.append(self.needs_input_grad)
        return grad_out if self.needs_input_grad else None


# ---------------------------------------------------------------------- Sequential as a list
def test_sequential_indexing_slicing_len_iter_append():
    a, b, c = Linear(3, 4), ReLU(), Linear(4, 2)
    seq = Sequential(a, b)
    assert len(seq) == 2 and seq[0] is a and seq[-1] is b and list(seq) == [a, b]
    seq.append(c)
    assert len(seq) == 3 and seq[2] is c
    tail = seq[1:]
    assert isinstance(tail, Sequential) and list(tail) == [b, c]
    assert list(tail.state_dict()) == ["2.weight", "2.bias"]  # slices keep PyTorch's names
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(IndexError, match="Sequential: index 3 is out of range for 3 modules"):
        seq[3]
    d = Linear(3, 4)
    seq[0] = d
    assert seq[0] is d and seq.state_dict()["0.weight"] is not None


def test_sequential_from_ordered_dict_uses_names():
    seq = Sequential(OrderedDict([("fc1", Linear(3, 4)), ("act", ReLU()), ("fc2", Linear(4, 2))]))
    assert list(seq.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert seq.fc1 is seq[0] and seq["act"] is seq[1]
    assert "(fc1): Linear(in_features=3, out_features=4, bias=True)" in repr(seq)


def test_sequential_state_dict_keys_match_torch():
    torch = pytest.importorskip("torch")
    ours = Sequential(Linear(3, 4), BatchNorm1d(4), ReLU(), Sequential(Linear(4, 2), Tanh()))
    ref = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                              torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()))
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_container_arguments_must_be_modules():
    with pytest.raises(TypeError, match="Sequential: argument 1 must be a cnnkit.nn.Module, got ufunc"):
        Sequential(Linear(2, 2), np.tanh)
    with pytest.raises(TypeError, match="Concat: branch 0 must be a cnnkit.nn.Module"):
        Concat("relu")
    with pytest.raises(TypeError, match="Residual: body must be a cnnkit.nn.Module"):
        Residual(None)
    with pytest.raises(ValueError, match="Concat: needs at least one branch"):
        Concat()


# ---------------------------------------------------------------------- gradients
def _mlp():
    return Sequential(Linear(4, 5), Tanh(), Linear(5, 3), Sigmoid())


CASES = {
    "sequential": lambda: _mlp(),
    "sequential_empty": lambda: Sequential(),
    "sequential_nested_bn_dropout": lambda: Sequential(Sequential(Linear(4, 6), BatchNorm1d(6)), Tanh(),
                                                       Dropout(0.3), Linear(6, 2)),
    "concat": lambda: Concat(Linear(4, 3), Identity(), Sequential(Linear(4, 2), Tanh())),
    "concat_dim_-1": lambda: Concat(Linear(4, 3), Tanh(), dim=-1),
    "residual_identity": lambda: Residual(Sequential(Linear(4, 4), Tanh())),
    "residual_shortcut": lambda: Residual(Sequential(Linear(4, 3), Tanh()), Linear(4, 3, bias=False)),
    "residual_in_sequential": lambda: Sequential(Linear(4, 4), Residual(Sequential(Tanh(), Linear(4, 4))),
                                                 Concat(Identity(), Sigmoid())),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(name):
    cnnkit.manual_seed(0)
    assert gradcheck(CASES[name](), _x((5, 4)))


def test_shared_input_gradients_add():
    # Concat of two identities: d/dx of [x, x] . [g1, g2] is g1 + g2.
    cat = Concat(Identity(), Identity())
    x = _x((2, 3))
    cat(x)
    g = _x((2, 6), 1)
    g.flags.writeable = False
    np.testing.assert_allclose(cat.backward(g), g[:, :3] + g[:, 3:])
    res = Residual(Identity())
    res(x)
    np.testing.assert_allclose(res.backward(g[:, :3]), 2 * g[:, :3])


# ---------------------------------------------------------------------- PyTorch parity
def _copy_to_torch(torch, ours, ref):
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})


def _run_both(torch, ours, ref, x, g, ref_forward=None):
    xt = torch.tensor(x, requires_grad=True)
    yt = ref_forward(xt) if ref_forward else ref(xt)
    yt.backward(torch.from_numpy(g))
    y = ours(x)
    gx = ours.backward(g)
    assert y.dtype == np.float32 and gx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, ref_params[name].grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


def test_sequential_matches_torch():
    torch = pytest.importorskip("torch")
    ours = Sequential(Linear(6, 8), BatchNorm1d(8), ReLU(), Linear(8, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    _copy_to_torch(torch, ours, ref)
    _run_both(torch, ours, ref, _x((7, 6)).astype(np.float32), _x((7, 3), 1).astype(np.float32))


def test_concat_and_residual_match_torch():
    torch = pytest.importorskip("torch")
    a, b, s = Linear(5, 3), Sequential(Linear(5, 4), Tanh()), Linear(5, 7)
    ours = Residual(Concat(a, b), s)
    ta, tb, ts = torch.nn.Linear(5, 3), torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh()), torch.nn.Linear(5, 7)
    ref = torch.nn.ModuleDict({"body": torch.nn.ModuleDict({"0": ta, "1": tb}), "shortcut": ts})
    _copy_to_torch(torch, ours, ref)

    def ref_forward(xt):
        return torch.cat([ta(xt), tb(xt)], dim=1) + ts(xt)

    _run_both(torch, ours, ref, _x((4, 5)).astype(np.float32), _x((4, 7), 1).astype(np.float32), ref_forward)


# ---------------------------------------------------------------------- needs_input_grad
def test_an_input_without_gradient_gets_no_gradient_work():
    """With ``needs_input_grad`` False the array's Tensor does not require a gradient, so
    the first layer's node is asked for none (the graph's own rule: no flag to pass on)."""
    first, second = Linear(3, 3), Linear(3, 3)
    seq = Sequential(first, second)
    seq.needs_input_grad = False
    x = _x((2, 3)).astype(np.float32)
    seq(x)
    first_node = graph_helpers.nodes(seq)[-1]
    assert first_node.function.__name__ == "Linear" and first_node.ctx.needs_input_grad[0] is False
    assert seq.backward(np.ones((2, 3), np.float32)) is None
    assert first.weight.grad is not None and second.weight.grad is not None
    seq.needs_input_grad = True
    seq(x)
    assert graph_helpers.nodes(seq)[-1].ctx.needs_input_grad[0] is True
    assert seq.backward(np.ones((2, 3), np.float32)).shape == (2, 3)


def test_needs_input_grad_false_gives_the_same_parameter_grads():
    cnnkit.manual_seed(0)
    model = Sequential(Linear(4, 5), Tanh(), Residual(Sequential(Linear(5, 5), Tanh())),
                       Concat(Linear(5, 2), Identity()))
    x = _x((3, 4)).astype(np.float32)
    g = _x((3, 7), 1).astype(np.float32)
    model(x)
    model.backward(g)
    expected = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    model.needs_input_grad = False
    model(x)
    assert model.backward(g) is None
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, expected[n], rtol=1e-6, err_msg=n)


def test_frozen_prefix_is_skipped_in_backward():
    spy_in, spy_mid, head = Spy(), Spy(), Linear(3, 2)
    backbone = Linear(3, 3)
    backbone.requires_grad_(False)
    model = Sequential(spy_in, backbone, spy_mid, head)
    model.needs_input_grad = False
    x = _x((2, 3)).astype(np.float32)
    model(x)
    assert model.backward(np.ones((2, 2), np.float32)) is None
    assert spy_in.backward_calls == 0 and backbone.weight.grad is None
    # the first trainable layer is the head: it is asked for no input gradient, and the flag is restored
    assert spy_mid.backward_calls == 0 and head.weight.grad is not None and head.needs_input_grad is True
    # with an input gradient needed, everything runs
    model.needs_input_grad = True
    model(x)
    assert model.backward(np.ones((2, 2), np.float32)).shape == (2, 3)
    assert spy_in.backward_calls == 1 and spy_mid.backward_calls == 1


def test_trainable_layer_after_frozen_gets_flag_only_during_backward():
    spy = Spy()
    lin = Linear(3, 3)
    model = Sequential(Sequential(spy, lin), Tanh())
    model.needs_input_grad = False
    model(_x((2, 3)).astype(np.float32))
    model.backward(np.ones((2, 3), np.float32))
    assert spy.backward_calls == 0 and lin.weight.grad is not None


def test_concat_and_residual_propagate_needs_input_grad():
    a, b = Linear(2, 2), Linear(2, 2)
    cat = Concat(a, b)
    cat.needs_input_grad = False
    x = _x((3, 2)).astype(np.float32)
    cat(x)
    assert cat.backward(np.ones((3, 4), np.float32)) is None
    assert a.weight.grad is not None and b.weight.grad is not None
    body, short = Linear(2, 2), Linear(2, 2)
    res = Residual(body, short)
    res.needs_input_grad = False
    res(x)
    assert res.backward(np.ones((3, 2), np.float32)) is None
    assert body.weight.grad is not None and short.weight.grad is not None


# ---------------------------------------------------------------------- errors, behaviour
def test_shape_errors():
    with pytest.raises(ValueError, match=r"Concat: branch outputs must match except along dim 1; got shapes \(2, 3\), \(2, 4, 1\)"):
        Concat(Linear(2, 3), Sequential(Linear(2, 4), _Unsqueeze()))(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"Residual: body output shape \(2, 3\) does not match input shape \(2, 2\).*shortcut"):
        Residual(Linear(2, 3))(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="Concat: dim 3 is out of range"):
        Concat(Identity(), dim=3)(np.ones((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        Sequential(Linear(2, 2)).backward(np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="Concat.*before forward"):
        Concat(Identity()).backward(np.ones((1, 2), np.float32))


class _Unsqueeze(Module):
    def forward(self, x):
        return x[..., None]

    def backward(self, grad_out):
        return grad_out[..., 0]


def test_train_eval_recurses_into_containers():
    drop = Dropout(0.5)
    model = Sequential(Residual(Sequential(drop)), Concat(BatchNorm1d(2)))
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert drop.training


def test_grad_out_is_never_written():
    model = Sequential(Linear(3, 4), ReLU(), Concat(Identity(), Tanh()), Residual(Identity()))
    x = _x((2, 3)).astype(np.float32)
    model(x)
    g = _x((2, 8), 1).astype(np.float32)
    g_copy = g.copy()
    g.flags.writeable = False
    model.backward(g)
    np.testing.assert_array_equal(g, g_copy)


def test_small_cnn_overfits_one_batch_with_plain_gradient_descent():
    """End to end: containers + layers + CrossEntropyLoss drive the loss of one batch near zero."""
    from cnnkit.nn import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, CrossEntropyLoss, Flatten, MaxPool2d

    cnnkit.manual_seed(0)
    model = Sequential(
        Conv2d(1, 8, 3, padding=1), BatchNorm2d(8), ReLU(), MaxPool2d(2),
        Residual(Sequential(Conv2d(8, 8, 3, padding=1), ReLU())),
        Concat(Conv2d(8, 4, 1), AdaptiveAvgPool2d(4)),
        Flatten(), Dropout(0.1), Linear(12 * 16, 3),
    )
    model.needs_input_grad = False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    loss_fn = CrossEntropyLoss()
    first = None
    for _ in range(60):
        model.zero_grad()
        value = loss_fn(model(x), y)
        first = value if first is None else first
        assert model.backward(loss_fn.backward()) is None
        for p in model.parameters():
            p.data -= 0.1 * p.grad
    model.eval()
    final = loss_fn(model(x), y)
    assert final < 0.1 * first
    assert np.all(model(x).argmax(axis=1) == y)


def test_error_inside_sequential_says_which_layer():
    import sys
    model = Sequential(Linear(4, 3), ReLU(), Linear(4, 2))
    with pytest.raises(ValueError, match="last dimension 4") as err:
        model(np.ones((2, 4), np.float32))
    if sys.version_info >= (3, 11):
        assert "in Sequential layer '2' (Linear)" in err.value.__notes__[0]


def test_concat_keeps_channels_last_memory_of_its_branches():
    channels_last = np.ascontiguousarray(_x((2, 3, 4, 5)).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    cat = Concat(Identity(), Tanh())
    y = cat(channels_last)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_array_equal(y, np.concatenate([channels_last, np.tanh(channels_last)], axis=1))
    g = _x((2, 6, 4, 5), 1)
    np.testing.assert_allclose(cat.backward(g), g[:, :3] + g[:, 3:] * (1 - np.tanh(channels_last) ** 2))


# ---------------------------------------------------------------------- in-place activations
def _relu_chain():
    from cnnkit.nn import BatchNorm2d, Conv2d, Flatten, MaxPool2d
    return Sequential(Conv2d(2, 3, 3, padding=1), ReLU(), MaxPool2d(2), ReLU(), BatchNorm2d(3), ReLU(),
                      Flatten(), Linear(12, 5), ReLU(), Linear(5, 2))


def test_relu_after_a_fresh_output_works_in_place_and_gradients_stay_exact():
    cnnkit.manual_seed(0)
    model = _relu_chain().double()
    x = _x((3, 2, 4, 4))
    x_copy = x.copy()
    assert gradcheck(model, x)
    out = model(x)
    np.testing.assert_array_equal(x, x_copy)           # the caller's input is never touched
    # In place: each ReLU keeps its own output (float) as the mask, not a new bool array;
    # the first one ran inside the Conv2d -> ReLU -> MaxPool2d pass (no node of its own).
    relus = [n for n in graph_helpers.nodes(model) if n.function.__name__ == "ReLU"]
    assert "Conv2dReluMaxPool" in graph_helpers.names(model)
    assert len(relus) == 3 and all(n.ctx.mask.dtype == np.float64 for n in relus)
    assert out.shape == (3, 2)


def test_in_place_relu_matches_the_copying_relu():
    cnnkit.manual_seed(0)
    model = _relu_chain()
    x = _x((4, 2, 4, 4)).astype(np.float32)
    out = model(x)
    g = _x(out.shape, 1).astype(np.float32)
    gx = model.backward(g)
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    # The same layers called one by one (no Sequential): every ReLU copies.
    model.zero_grad()
    y = x
    for m in model:
        y = m(y)
        if type(m) is ReLU:
            assert graph_helpers.nodes(m)[0].ctx.mask.dtype == bool
    np.testing.assert_allclose(y, out, rtol=1e-6, atol=1e-6)
    h = g
    for m in reversed(list(model)):
        h = m.backward(h)
    np.testing.assert_allclose(h, gx, rtol=1e-6, atol=1e-6)
    for p, ref in zip(model.parameters(), grads):
        np.testing.assert_allclose(p.grad, ref, rtol=1e-5, atol=1e-6)


def test_a_hooked_output_is_not_overwritten():
    from cnnkit.nn import Conv2d
    model = Sequential(Conv2d(1, 2, 3), ReLU())
    seen = []
    model[0].register_forward_hook(lambda m, inp, out: seen.append(out))
    out = model(_x((2, 1, 5, 5)).astype(np.float32))
    assert (seen[0] < 0).any()                         # the conv's output kept its negatives
    np.testing.assert_array_equal(out, np.maximum(seen[0], 0))
    assert graph_helpers.nodes(model)[0].ctx.mask.dtype == bool


def test_caller_gradient_is_not_overwritten_by_an_in_place_relu():
    model = Sequential(Linear(3, 4), ReLU())
    model(_x((2, 3)).astype(np.float32))
    g = _x((2, 4), 1).astype(np.float32)
    g_copy = g.copy()
    model.backward(g)                                   # writeable, but the caller's
    np.testing.assert_array_equal(g, g_copy)


def test_relu_after_conv_is_fused_unless_observed():
    from cnnkit.nn import Conv2d
    cnnkit.manual_seed(0)
    model = Sequential(Conv2d(1, 3, 3), ReLU(), Conv2d(3, 2, 3), ReLU())
    x = _x((2, 1, 7, 7)).astype(np.float32)
    out = model(x)
    expected = np.maximum(model[2](np.maximum(model[0](x), 0)), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    seen = []
    model[1].register_forward_hook(lambda m, inp, o: seen.append(inp.detach().numpy().copy()))
    np.testing.assert_allclose(model(x), expected, rtol=1e-6, atol=1e-6)
    assert (seen[0] < 0).any()          # the hooked ReLU saw the convolution's raw output


# ---------------------------------------------------------------------- folded ReLU backward
def _fold_cases():
    from cnnkit.nn import Conv2d, MaxPool2d

    def conv_in(c_out):
        # A negative bias leaves many zeros after the ReLU (dead pooling windows, masked taps).
        conv = Conv2d(3, c_out, 3, padding=1)
        conv.bias.data -= np.float32(0.4)
        return conv

    return {
        "conv_transposed_path": lambda: Sequential(conv_in(8), ReLU(), Conv2d(8, 5, 3, padding=1)),
        "conv_tap_major_path": lambda: Sequential(conv_in(6), ReLU(), Conv2d(6, 5, 3, stride=2, padding=1)),
        "conv_col2im_path": lambda: Sequential(conv_in(40), ReLU(), Conv2d(40, 5, 3, stride=2, padding=1)),
        "conv_winograd_path": lambda: Sequential(conv_in(64), ReLU(), Conv2d(64, 128, 3, padding=1)),
        "conv_depthwise": lambda: Sequential(conv_in(8), ReLU(), Conv2d(8, 8, 3, padding=1, groups=8)),
        "maxpool_2x2": lambda: Sequential(conv_in(8), ReLU(), MaxPool2d(2)),
        "maxpool_3x3_s2_p1": lambda: Sequential(conv_in(8), ReLU(), MaxPool2d(3, stride=2, padding=1)),
        "maxpool_ceil_mode": lambda: Sequential(conv_in(8), ReLU(), MaxPool2d(2, ceil_mode=True)),
        "conv4_like": lambda: Sequential(conv_in(8), ReLU(), Conv2d(8, 8, 3, padding=1), ReLU(), MaxPool2d(2),
                                         Conv2d(8, 16, 3, padding=1), ReLU(), MaxPool2d(2)),
    }


FOLD_CASES = _fold_cases()


def _one_by_one(model, x, g):
    """Output, input gradient and parameter gradients with the children called one at a
    time, outside any Sequential: nothing fused, nothing folded, every ReLU runs its own
    backward."""
    model.zero_grad()
    y = x
    for m in model:
        y = m(y)
    h = g
    for m in reversed(list(model)):
        h = m.backward(h)
    return y, h, [p.grad.numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(FOLD_CASES))
def test_folded_relu_backward_equals_the_relu_run_on_its_own(name, train):
    cnnkit.manual_seed(0)
    model = FOLD_CASES[name]()
    model.train(train)
    side = 7 if "ceil" in name else 8                       # odd: ceil mode adds a window
    x = _x((3, 3, side, side)).astype(np.float32)
    out = model(x)
    g = _x(out.shape, 1).astype(np.float32)
    work = graph_helpers.relu_backward_work(model)
    gx = model.backward(g)
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    # Every ReLU here is followed by a layer that folds its backward in: none masks itself.
    assert not any(work)
    assert (model[1](model[0](x)) == 0).mean() > 0.3      # the masks really cut something
    ref_out, ref_gx, ref_grads = _one_by_one(model, x, g)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(gx, ref_gx)
    for got, ref in zip(grads, ref_grads):
        np.testing.assert_array_equal(got, ref)


def test_folded_maxpool_windows_without_a_positive_value_get_no_gradient():
    from cnnkit.nn import MaxPool2d
    # Window 0 is all zeros (a dead ReLU output), window 1 has a positive maximum.
    x = np.array([[[[0, 0, 0, 2], [0, 0, 1, 0]]]], dtype=np.float32)
    model = Sequential(ReLU(), MaxPool2d(2))
    model(x)
    gx = model.backward(np.ones((1, 1, 1, 2), dtype=np.float32))
    np.testing.assert_array_equal(gx, [[[[0, 0, 0, 1], [0, 0, 0, 0]]]])
    # The pool on its own routes a dead window's gradient to its first tap, as PyTorch does.
    pool = MaxPool2d(2)
    pool(x)
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 2), dtype=np.float32)),
                                  [[[[1, 0, 0, 1], [0, 0, 0, 0]]]])


def test_a_hooked_consumer_does_not_fold_the_relu_backward():
    from cnnkit.nn import Conv2d

    cnnkit.manual_seed(0)
    model = Sequential(Conv2d(2, 4, 3, padding=1), ReLU(), Conv2d(4, 3, 3, padding=1))
    model[2].register_forward_hook(lambda m, inp, out: None)
    x = _x((2, 2, 6, 6)).astype(np.float32)
    out = model(x)
    g = _x(out.shape, 1).astype(np.float32)
    # The first conv's fused ReLU keeps its own mask: its consumer is observed.
    conv_nodes = [n for n in graph_helpers.nodes(model) if n.function.__name__ == "Conv2d"]
    assert conv_nodes[-1].ctx.saved_tensors[1] is not None
    gx = model.backward(g)
    _, ref_gx, _ = _one_by_one(model, x, g)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-6)


def test_a_hooked_relu_is_not_folded():
    from cnnkit.nn import Conv2d
    model = Sequential(Conv2d(2, 4, 3, padding=1), ReLU(), Conv2d(4, 3, 3, padding=1))
    model[1].register_forward_hook(lambda m, inp, out: None)
    out = model(_x((2, 2, 6, 6)).astype(np.float32))
    assert graph_helpers.relu_backward_work(model) == [True]
    model.backward(np.ones_like(out))


def test_folded_chain_gradcheck_float64():
    cnnkit.manual_seed(0)
    model = FOLD_CASES["conv4_like"]().double()
    assert gradcheck(model, _x((2, 3, 8, 8)))


def test_folded_chain_matches_torch():
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(0)
    ours = FOLD_CASES["conv4_like"]()
    nn = torch.nn
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    _copy_to_torch(torch, ours, ref)
    x = _x((4, 3, 8, 8)).astype(np.float32)
    _run_both(torch, ours, ref, x, _x((4, 16, 2, 2), 1).astype(np.float32))


# ---------------------------------------------------------------------- Conv2d -> ReLU -> MaxPool2d in one pass
def _conv_pool_cases():
    from cnnkit.nn import Conv2d, MaxPool2d
    return {
        "first_layer_few_channels": lambda: (Conv2d(1, 8, 3, padding=1), MaxPool2d(2)),
        "im2col_gemm": lambda: (Conv2d(8, 12, 3, padding=1), MaxPool2d(2)),
        "winograd": lambda: (Conv2d(64, 128, 3, padding=1), MaxPool2d(2)),
        "depthwise": lambda: (Conv2d(8, 8, 3, padding=1, groups=8), MaxPool2d(2)),
        "pointwise": lambda: (Conv2d(8, 6, 1), MaxPool2d(2)),
        "strided_conv_overlapping_pool": lambda: (Conv2d(8, 6, 3, stride=2, padding=1), MaxPool2d(3, 2, padding=1)),
        "ceil_mode": lambda: (Conv2d(8, 6, 3), MaxPool2d(2, ceil_mode=True)),
    }


CONV_POOL_CASES = _conv_pool_cases()


#: The two orders that run as one pass: (index of the ReLU, index of the pool) after the conv.
POOL_ORDERS = {"relu_then_pool": (1, 2), "pool_then_relu": (2, 1)}


def _conv_pool_model(name, order="relu_then_pool"):
    conv, pool = CONV_POOL_CASES[name]()
    conv.bias.data -= np.float32(0.3)                # dead windows too
    if order == "pool_then_relu":                    # LeNet's order
        return Sequential(conv, pool, ReLU())
    return Sequential(conv, ReLU(), pool)


@pytest.mark.parametrize("order", list(POOL_ORDERS))
@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["one_chunk", "one_image_per_chunk"])
@pytest.mark.parametrize("name", list(CONV_POOL_CASES))
def test_conv_relu_maxpool_in_one_pass_equals_the_layers_one_by_one(name, chunk_bytes, order, monkeypatch):
    from cnnkit.nn import _conv_pool
    if chunk_bytes:
        monkeypatch.setattr(_conv_pool, "CHUNK_BYTES", chunk_bytes)
    cnnkit.manual_seed(0)
    model = _conv_pool_model(name, order)
    relu, pool = (model[k] for k in POOL_ORDERS[order])
    c = model[0].in_channels
    x = _x((5, c, 9, 9)).astype(np.float32)
    # Inference: one pass, no graph.
    with cnnkit.no_grad():
        model.eval()
        out_eval = model(x)
    # Training: one node that keeps the pool's winners (dead windows marked).
    model.train()
    out = model(x)
    assert graph_helpers.names(model) == ["Conv2dReluMaxPool"]
    assert graph_helpers.nodes(model)[0].ctx.caches[1] is not None
    g = _x(out.shape, 1).astype(np.float32)
    gx = model.backward(g)
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    ref_out, ref_gx, ref_grads = _one_by_one(model, x, g)
    assert (ref_out == 0).any()
    # The one pass runs other GEMM shapes than the layers one by one (chunks), and inference
    # may run other kernels than training: the sums agree up to float32 rounding. No sum
    # here has more terms than the input has values. The pool's winners and dead windows
    # must agree exactly.
    assert np.array_equal(out == 0, ref_out == 0)
    for got, ref in [(out, ref_out), (out_eval, ref_out), (gx, ref_gx), *zip(grads, ref_grads)]:
        assert_float32_close(got, ref, x.size)


def test_conv_relu_maxpool_not_fused_when_observed_or_eval_with_gradients():
    from cnnkit.nn import Conv2d, MaxPool2d
    cnnkit.manual_seed(0)
    model = Sequential(Conv2d(2, 4, 3, padding=1), ReLU(), MaxPool2d(2))
    x = _x((2, 2, 6, 6)).astype(np.float32)
    model.eval()                       # eval with gradients (saliency): the pool on its own
    model(x)                           # (its winners need the full-size input), ReLU in the conv
    assert graph_helpers.names(model) == ["MaxPool2d", "Conv2d"]
    assert graph_helpers.nodes(model)[1].ctx.relu
    model.train()
    seen = []
    model[2].register_forward_hook(lambda m, inp, o: seen.append(inp))
    model(x)
    assert len(seen) == 1 and (seen[0] >= 0).all()     # the hook saw the ReLU's output


@pytest.mark.parametrize("order", list(POOL_ORDERS))
def test_conv_relu_maxpool_one_pass_gradcheck_float64(order):
    cnnkit.manual_seed(0)
    model = _conv_pool_model("im2col_gemm", order).double()
    assert gradcheck(model, _x((2, 8, 6, 6)))


def test_conv_maxpool_relu_not_fused_when_the_relu_is_observed_or_eval_with_gradients():
    from cnnkit.nn import Conv2d, MaxPool2d
    cnnkit.manual_seed(0)
    model = Sequential(Conv2d(2, 4, 3, padding=1), MaxPool2d(2), ReLU())
    model[0].bias.data -= np.float32(0.3)
    x = _x((2, 2, 6, 6)).astype(np.float32)
    model.eval()                       # eval with gradients: the layers one by one
    model(x)
    assert graph_helpers.names(model) == ["ReLU", "MaxPool2d", "Conv2d"]
    model.train()
    seen = []
    model[2].register_forward_hook(lambda m, inp, o: seen.append(inp))
    model(x)
    assert graph_helpers.names(model) == ["ReLU", "MaxPool2d", "Conv2d"]   # each ran on its own
    assert len(seen) == 1 and (seen[0] < 0).any()      # the hook saw the pool's raw output


def test_lenet_order_matches_torch():
    torch = pytest.importorskip("torch")
    from cnnkit.nn import Conv2d, Flatten, Linear, MaxPool2d
    cnnkit.manual_seed(0)
    ours = Sequential(Conv2d(1, 6, 5), MaxPool2d(2), ReLU(), Conv2d(6, 8, 5), MaxPool2d(2), ReLU(),
                      Flatten(), Linear(8 * 4 * 4, 10))
    nn = torch.nn
    ref = nn.Sequential(nn.Conv2d(1, 6, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(6, 8, 5), nn.MaxPool2d(2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    _copy_to_torch(torch, ours, ref)
    x = _x((4, 1, 28, 28)).astype(np.float32)
    _run_both(torch, ours, ref, x, _x((4, 10), 1).astype(np.float32))


# ---------------------------------------------------------------------- eval BatchNorm folded into the conv
def _bn_fold_cases():
    from cnnkit.nn import Conv2d
    return {
        "im2col_gemm": lambda: Conv2d(8, 12, 3, padding=1),
        "first_layer_few_channels": lambda: Conv2d(3, 8, 3, padding=1, bias=False),
        "winograd": lambda: Conv2d(64, 128, 3, padding=1),
        "depthwise": lambda: Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        "pointwise": lambda: Conv2d(8, 6, 1),
        "strided": lambda: Conv2d(8, 6, 3, stride=2, padding=1),
    }


BN_FOLD_CASES = _bn_fold_cases()
ACTIVATIONS = {"none": None, "relu": ReLU, "relu6": cnnkit.nn.ReLU6}


def _bn_fold_model(name, act, affine=True):
    from cnnkit.nn import BatchNorm2d
    conv = BN_FOLD_CASES[name]()
    bn = BatchNorm2d(conv.out_channels, affine=affine)
    rng = np.random.default_rng(3)
    bn.running_mean[...] = rng.standard_normal(bn.num_features) * 0.5
    bn.running_var[...] = rng.random(bn.num_features) + 0.5
    if affine:
        bn.weight.data[...] = rng.standard_normal(bn.num_features) * 2     # some negative scales
        bn.bias.data[...] = rng.standard_normal(bn.num_features)
    layers = [conv, bn] + ([ACTIVATIONS[act]()] if ACTIVATIONS[act] else [])
    return Sequential(*layers).eval()


def _count_forwards(module):
    calls = []
    original = module.forward

    def counted(x):
        calls.append(1)
        return original(x)

    module.forward = counted
    return calls


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("name", list(BN_FOLD_CASES))
def test_eval_batch_norm_folded_into_conv_without_gradients(name, act, affine):
    cnnkit.manual_seed(0)
    model = _bn_fold_model(name, act, affine)
    x = (_x((3, model[0].in_channels, 9, 9)) * 3).astype(np.float32)
    y = x
    for m in model:                                    # the layers one by one: nothing folded
        y = m(y)
    bn_calls = _count_forwards(model[1])
    with cnnkit.no_grad():
        out = model(x)
    assert bn_calls == []                              # the BatchNorm did not run: folded
    assert out.shape == y.shape and out.dtype == np.float32
    # Same map, products in another order: float32 rounding apart.
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5 * float(np.abs(y).max()))
    if act == "relu6":
        assert out.max() == 6 and out.min() == 0       # the cap was applied (values reach it)
    elif act == "relu":
        assert out.min() == 0 and (out > 0).any()


def test_batch_norm_not_folded_with_gradients_training_mode_batch_stats_or_hooks():
    from cnnkit.nn import BatchNorm2d, Conv2d
    x = _x((4, 8, 6, 6)).astype(np.float32)

    def folded(model):
        calls = _count_forwards(model[1])
        with cnnkit.no_grad():
            model(x)
        return calls == []

    assert folded(_bn_fold_model("im2col_gemm", "relu6"))
    model = _bn_fold_model("im2col_gemm", "relu6")
    calls = _count_forwards(model[1])
    model(x)                                           # eval with gradients: layers as they are
    assert calls == [1] and "BatchNorm" in graph_helpers.names(model)
    model = _bn_fold_model("im2col_gemm", "relu6").train()
    assert not folded(model)                           # batch statistics
    no_stats = Sequential(Conv2d(8, 4, 3), BatchNorm2d(4, track_running_stats=False), ReLU()).eval()
    assert not folded(no_stats)                        # eval mode, but batch statistics too
    hooked = _bn_fold_model("im2col_gemm", "relu6")
    hooked[1].register_forward_hook(lambda m, i, o: None)
    assert not folded(hooked)
    mixed = _bn_fold_model("im2col_gemm", "relu6")
    mixed[1].double()                                  # the BatchNorm would cast to float64
    assert not folded(mixed)
    act_hooked = _bn_fold_model("im2col_gemm", "relu")
    seen = []
    act_hooked[2].register_forward_hook(lambda m, i, o: seen.append(i))
    assert folded(act_hooked)                          # the BatchNorm still folds ...
    assert len(seen) == 1 and (seen[0] < 0).any()     # ... and the ReLU runs on its own


def test_folded_batch_norm_matches_torch():
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(0)
    ours = _bn_fold_model("depthwise", "relu6")
    nn = torch.nn
    ref = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6()).eval()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    x = (_x((2, 8, 7, 7)) * 3).astype(np.float32)
    with cnnkit.no_grad():
        out = ours(x)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def test_a_conv_subclass_with_its_own_forward_is_called_as_it_is():
    """The planner fuses only layers whose forward is the library's own."""
    from cnnkit.nn import Conv2d

    class Doubled(Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    cnnkit.manual_seed(0)
    model = Sequential(Doubled(1, 2, 3), ReLU(), Conv2d(2, 2, 3))
    x = _x((2, 1, 6, 6)).astype(np.float32)
    out = model(x)
    y = x
    for m in model:
        y = m(y)
    np.testing.assert_array_equal(out, y)
    first = model[0]
    np.testing.assert_array_equal(first(x), 2 * Conv2d.forward(first, cnnkit.from_numpy(x)).detach().numpy())


def _avg_pool_cases():
    from cnnkit.nn import AvgPool2d, Conv2d
    return {
        "first_layer_few_channels": lambda: (Conv2d(1, 8, 3), AvgPool2d(2)),         # seed-000's first block
        "im2col_gemm": lambda: (Conv2d(8, 12, 5), AvgPool2d(2)),                    # ... and its second
        "row_taps": lambda: (Conv2d(8, 12, 3, padding=1), AvgPool2d(2)),
        "padded_pool_without_pad_count": lambda: (Conv2d(8, 6, 3), AvgPool2d(3, 2, padding=1,
                                                                            count_include_pad=False)),
        "ceil_mode": lambda: (Conv2d(8, 6, 3), AvgPool2d(2, ceil_mode=True)),
    }


AVG_POOL_CASES = _avg_pool_cases()


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["one_chunk", "one_image_per_chunk"])
@pytest.mark.parametrize("name", list(AVG_POOL_CASES))
def test_conv_relu_avgpool_in_one_pass_without_gradients(name, chunk_bytes, monkeypatch):
    """Without gradients Conv2d -> ReLU -> AvgPool2d runs as one pass (``Conv2dReluAvgPool``)
    and gives the layers' values one by one; with gradients the layers run as before."""
    from cnnkit.nn import _conv_pool
    from cnnkit.nn import _kernels as K
    if chunk_bytes:
        monkeypatch.setattr(_conv_pool, "CHUNK_BYTES", chunk_bytes)
    calls = []
    real = K.conv2d_relu_avg_pool2d
    monkeypatch.setattr(K, "conv2d_relu_avg_pool2d", lambda *a: (calls.append(1), real(*a))[1])
    cnnkit.manual_seed(0)
    conv, pool = AVG_POOL_CASES[name]()
    conv.bias.data -= np.float32(0.3)                # some outputs rectified to 0
    model = Sequential(conv, ReLU(), pool)
    x = _x((5, conv.in_channels, 11, 11)).astype(np.float32)
    with cnnkit.no_grad():
        out = model(x)
        ref = pool(cnnkit.from_numpy(np.maximum(conv(cnnkit.from_numpy(x)).numpy(), 0))).numpy()
    assert calls
    # The one pass runs the convolution's GEMMs on other chunks than the layer alone: its
    # sums agree up to float32 rounding (no sum has more terms than the input has values);
    # the ReLU and the average are the same operations on those values.
    assert_float32_close(out, ref, x.size)
    calls.clear()
    train_out = model(x)                              # with gradients: no one-pass node
    assert calls == [] and "Conv2dReluAvgPool" not in graph_helpers.names(model)
    assert_float32_close(np.asarray(train_out), ref, x.size)


@pytest.mark.parametrize("pool_name", ["avg", "max"])
@pytest.mark.parametrize("conv_kwargs, size, out_rows", [
    (dict(in_channels=8, out_channels=12, kernel_size=5), 13, 8),              # seed-000's 9x9 -> 8x8
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), 11, 10),   # 'same', odd size
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), 13, 6),
    (dict(in_channels=3, out_channels=4, kernel_size=3, dilation=2, padding=2), 9, 8),
    (dict(in_channels=8, out_channels=12, kernel_size=3), 10, 8),              # even: nothing to cut
])
def test_a_pool_that_drops_the_last_row_makes_the_fused_conv_compute_less(pool_name, conv_kwargs, size,
                                                                           out_rows, monkeypatch):
    """Without gradients, the fused conv + ReLU + pool computes only the convolution
    outputs the pool's windows read (a floor-mode pool drops an odd last row and column),
    and still gives the values of the three layers run one by one."""
    from cnnkit.nn import AvgPool2d, Conv2d, MaxPool2d
    from cnnkit.nn import _kernels as K
    seen = []
    real = K.conv_forward_kernel
    monkeypatch.setattr(K, "conv_forward_kernel",
                        lambda c, w, groups, geo, *a, **kw: (seen.append(geo["out_hw"]), real(c, w, groups, geo, *a, **kw))[1])
    cnnkit.manual_seed(0)
    conv = Conv2d(**conv_kwargs)
    conv.bias.data -= np.float32(0.3)                # some outputs rectified to 0
    pool = AvgPool2d(2) if pool_name == "avg" else MaxPool2d(2)
    model = Sequential(conv, ReLU(), pool)
    x = _x((3, conv.in_channels, size, size)).astype(np.float32)
    with cnnkit.no_grad():
        out = model(x)
        full = conv(cnnkit.from_numpy(x)).numpy()
        ref = pool(cnnkit.from_numpy(np.maximum(full, 0))).numpy()
    assert seen[0] == (out_rows, out_rows) and full.shape[2] in (out_rows, out_rows + 1)
    # Other GEMM chunks than the layer alone: equal up to float32 rounding of the sums.
    assert_float32_close(out, ref, x.size)
