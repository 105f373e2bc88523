"""Module / Parameter base: registration, state_dict, load errors, modes, grads, dtype, repr, summary."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cnnkit.nn import BatchNorm1d, Dropout, Linear, Module, Parameter, ReLU, Sequential


class Block(Module):
    """A small custom module: own parameter, a buffer, then children."""

    def __init__(self):
        super().__init__()
        self.scale = Parameter(np.ones(4, np.float32))
        self.register_buffer("count", np.array(0, np.int64))
        self.fc = Linear(3, 4)
        self.bn = BatchNorm1d(4)
        self.act = ReLU()

    def forward(self, x):
        return self.act(self.bn(self.fc(x))) * self.scale.data


def test_state_dict_order_matches_pytorch_rules():
    sd = Block().state_dict()
    assert list(sd) == ["scale", "count", "fc.weight", "fc.bias", "bn.weight", "bn.bias",
                        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]


def test_state_dict_matches_torch_for_equivalent_module():
    torch = pytest.importorskip("torch")

    class TBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(4))
            self.register_buffer("count", torch.tensor(0))
            self.fc = torch.nn.Linear(3, 4)
            self.bn = torch.nn.BatchNorm1d(4)
            self.act = torch.nn.ReLU()

    assert list(Block().state_dict()) == list(TBlock().state_dict())
    # and a torch state dict loads as it is
    ref = TBlock()
    ours = Block()
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    np.testing.assert_array_equal(ours.fc.weight.data, ref.fc.weight.detach().numpy())


def test_state_dict_values_are_copies():
    m = Linear(2, 2)
    sd = m.state_dict()
    sd["weight"][...] = 123
    assert not np.any(m.weight.data == 123)


def test_load_state_dict_strict_lists_every_problem_and_changes_nothing():
    m = Block()
    sd = m.state_dict()
    del sd["fc.bias"]
    sd["extra.weight"] = np.zeros(2)
    sd["bn.weight"] = np.zeros(5, np.float32)
    before = m.state_dict()
    with pytest.raises(ValueError) as err:
        m.load_state_dict(sd)
    msg = str(err.value)
    assert "Block" in msg
    assert "missing keys: fc.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "bn.weight: expected shape (4,), got (5,)" in msg
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    m = Linear(2, 2)
    missing, unexpected = m.load_state_dict({"weight": np.eye(2), "junk": np.zeros(1)}, strict=False)
    assert missing == ["bias"] and unexpected == ["junk"]
    np.testing.assert_array_equal(m.weight.data, np.eye(2))
    assert m.weight.dtype == np.float32  # loaded values keep the parameter's dtype
    with pytest.raises(ValueError, match="shape mismatches: weight"):
        m.load_state_dict({"weight": np.eye(3)}, strict=False)


def test_train_eval_recursion():
    m = Sequential(Block(), Sequential(Dropout(), ReLU()))
    assert m.eval() is m
    assert all(not mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())


def test_zero_grad_and_accumulation():
    m = Linear(3, 2)
    x = np.ones((1, 3), np.float32)
    for _ in range(2):
        m(x)
        m.backward(np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(m.weight.grad, 2)  # gradients accumulate
    m.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(m.weight.grad, 0)
    m.zero_grad()
    assert m.weight.grad is None and m.bias.grad is None


def test_frozen_params_get_no_grad():
    m = Block()
    m.fc.requires_grad_(False)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y = m.fc(x)
    m.fc.backward(np.ones_like(y))
    assert m.fc.weight.grad is None and m.fc.bias.grad is None
    assert m.num_parameters(trainable_only=True) == m.num_parameters() - 16
    p = Parameter(np.zeros(3), requires_grad=False)
    p.accumulate_grad(np.ones(3))
    assert p.grad is None


def test_accumulate_grad_shape_error():
    p = Parameter(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"gradient shape \(3, 2\) does not match parameter shape \(2, 3\)"):
        p.accumulate_grad(np.zeros((3, 2), np.float32))


def test_parameter_dtype_rules():
    assert Parameter([1, 2]).dtype == np.float32  # integers become float32
    assert Parameter(np.zeros(2)).dtype == np.float64  # floats keep their precision
    src = np.zeros(2, np.float32)
    assert Parameter(src).data is not src


def test_to_float64_casts_params_and_float_buffers_only():
    m = Block().double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.bn.running_mean.dtype == np.float64
    assert m.bn.num_batches_tracked.dtype == np.int64 and m.count.dtype == np.int64
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())


def test_backward_before_forward_error_names_the_layer():
    with pytest.raises(RuntimeError, match=r"Linear\(in_features=3, out_features=4, bias=True\): backward\(\) called before forward\(\)"):
        Linear(3, 4).backward(np.ones((1, 4), np.float32))


def test_repr_nests_children():
    text = repr(Sequential(Linear(2, 3), ReLU()))
    assert text == ("Sequential(\n  (0): Linear(in_features=2, out_features=3, bias=True)\n"
                    "  (1): ReLU()\n)")


def test_summary_table():
    m = Sequential(Linear(4, 8), ReLU(), Sequential(Linear(8, 3)))
    m.train()
    text = m.summary((4,), print_fn=None)
    lines = text.splitlines()
    assert lines[0] == "Sequential summary (input (4,))"
    assert any(line.split()[:4] == ["0", "Linear", "(1,", "8)"] and line.split()[-1] == "40" for line in lines)
    assert any(line.startswith("2.0") and line.split()[-1] == "27" for line in lines)
    assert "Total params: 67" in text and "Trainable params: 67" in text and "Non-trainable params: 0" in text
    assert m.training  # summary restores the mode


def test_attribute_registration_and_deletion():
    m = Module()
    m.w = Parameter(np.zeros(2))
    m.child = Linear(1, 1)
    assert [n for n, _ in m.named_parameters()] == ["w", "child.weight", "child.bias"]
    m.w = None  # a plain value replaces a parameter
    assert [n for n, _ in m.named_parameters()] == ["child.weight", "child.bias"]
    del m.child
    assert list(m.named_parameters()) == []
    with pytest.raises(AttributeError, match="'Module' object has no attribute 'missing'"):
        m.missing


def test_shared_parameter_listed_once():
    a = Linear(2, 2)
    m = Sequential(a, a)
    assert len(list(m.parameters())) == 2


def test_forward_hook_and_removal():
    m = Linear(2, 2)
    seen = []
    handle = m.register_forward_hook(lambda mod, x, y: seen.append(y.shape))
    m(np.ones((3, 2), np.float32))
    handle.remove()
    m(np.ones((3, 2), np.float32))
    assert seen == [(3, 2)]


def test_parameter_order_does_not_depend_on_hash_seed():
    code = ("from cnnkit.nn import Linear, Sequential, BatchNorm1d, Module, Parameter\n"
            "import numpy as np\n"
            "m = Sequential(Linear(2, 3), BatchNorm1d(3))\n"
            "m.extra = Parameter(np.zeros(1)); m.zeta = Linear(1, 1); m.alpha = Linear(1, 1)\n"
            "print(','.join(n for n, _ in m.named_parameters()), ','.join(m.state_dict()))\n")
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outputs.add(res.stdout)
    assert len(outputs) == 1
    # a module's own parameters first, then its children in assignment order (as PyTorch)
    assert outputs.pop().startswith("extra,0.weight,0.bias,1.weight,1.bias,zeta.weight,zeta.bias,alpha.weight")
