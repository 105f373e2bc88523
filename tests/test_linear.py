"""Linear, Flatten, Identity: gradients, PyTorch parity, init, errors."""

import math

import numpy as np
import pytest

import cnnkit
from cnnkit.gradient_check import gradcheck
from cnnkit.nn import Flatten, Identity, Linear

RTOL, ATOL = 1e-4, 1e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_linear_gradcheck(bias, shape):
    cnnkit.manual_seed(0)
    layer = Linear(4, 3, bias=bias)
    assert gradcheck(layer, _rng().standard_normal(shape))


@pytest.mark.parametrize("start,end,shape", [(1, -1, (2, 3, 4, 5)), (0, -1, (2, 3, 4)), (1, 2, (2, 3, 4, 5)),
                                             (2, 3, (2, 3, 4, 5))])
def test_flatten_gradcheck(start, end, shape):
    assert gradcheck(Flatten(start, end), _rng().standard_normal(shape))


def test_identity_gradcheck():
    assert gradcheck(Identity(), _rng().standard_normal((3, 4)))


# ---------------------------------------------------------------------- PyTorch parity
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(8, 6), (2, 5, 6)])
def test_linear_matches_torch(bias, shape):
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(1)
    ours = Linear(6, 4, bias=bias)
    ref = torch.nn.Linear(6, 4, bias=bias)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    rng = _rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape[:-1] + (4,)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    y = ours(x)
    gx = ours.backward(g)
    assert y.dtype == np.float32 and gx.dtype == np.float32 and ours.weight.grad.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), rtol=RTOL, atol=ATOL)
    if bias:
        np.testing.assert_allclose(ours.bias.grad, ref.bias.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("start,end", [(1, -1), (0, -1), (1, 2), (2, 3), (-3, -2)])
def test_flatten_matches_torch(start, end):
    torch = pytest.importorskip("torch")
    x = _rng().standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = torch.nn.Flatten(start, end)(torch.from_numpy(x)).numpy()
    out = Flatten(start, end)(x)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


def test_linear_loads_torch_state_dict_keys():
    torch = pytest.importorskip("torch")
    ref = torch.nn.Linear(3, 2)
    ours = Linear(3, 2)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    np.testing.assert_array_equal(ours.weight.data, ref.weight.detach().numpy())


# ---------------------------------------------------------------------- init, dtype, behaviour
def test_linear_default_init_is_pytorchs_range_and_seeded():
    cnnkit.manual_seed(3)
    a = Linear(50, 40)
    cnnkit.manual_seed(3)
    b = Linear(50, 40)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / math.sqrt(50)
    for p in (a.weight.data, a.bias.data):
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
    # U(-b, b) has std b / sqrt(3)
    assert abs(a.weight.data.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
    c = Linear(50, 40, generator=np.random.default_rng(7))
    d = Linear(50, 40, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(c.weight.data, d.weight.data)


def test_linear_float64_after_double():
    layer = Linear(3, 2).double()
    x = np.ones((1, 3))
    assert layer(x).dtype == np.float64
    assert layer.backward(np.ones((1, 2))).dtype == np.float64


def test_linear_needs_input_grad_false_still_gives_param_grads():
    layer = Linear(3, 2)
    layer.needs_input_grad = False
    x = _rng().standard_normal((4, 3)).astype(np.float32)
    layer(x)
    assert layer.backward(np.ones((4, 2), np.float32)) is None
    np.testing.assert_allclose(layer.weight.grad, np.ones((2, 4), np.float32) @ x, rtol=1e-6)
    np.testing.assert_allclose(layer.bias.grad, [4, 4])


def test_linear_frozen_weight_gets_no_grad_and_grads_accumulate():
    layer = Linear(3, 2)
    layer.weight.requires_grad = False
    x = np.ones((2, 3), np.float32)
    g = np.ones((2, 2), np.float32)
    layer(x)
    layer.backward(g)
    layer(x)
    layer.backward(g)
    assert layer.weight.grad is None
    np.testing.assert_array_equal(layer.bias.grad, [4, 4])


def test_linear_does_not_write_into_grad_out():
    layer = Linear(3, 2)
    layer(np.ones((2, 3), np.float32))
    g = np.ones((2, 2), np.float32)
    g.flags.writeable = False                       # a write would raise
    gx = layer.backward(g)
    np.testing.assert_array_equal(g, np.ones((2, 2), np.float32))
    # Each input gradient is a sum of two products (float32 rounding apart from float64).
    np.testing.assert_allclose(gx, g.astype(np.float64) @ layer.weight.data.astype(np.float64),
                               rtol=4 * np.finfo(np.float32).eps)


def test_linear_errors():
    layer = Linear(4, 3)
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*last dimension 4.*\(2, 5\)"):
        layer(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="Linear.*floating.*int64"):
        layer(np.ones((2, 4), np.int64))
    with pytest.raises(RuntimeError, match="Linear.*backward\\(\\) called before forward"):
        Linear(4, 3).backward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="positive"):
        Linear(0, 3)


def test_flatten_errors_and_repr():
    with pytest.raises(RuntimeError, match="before forward"):
        Flatten().backward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="Flatten.*cannot flatten dims 3..-1.*\\(2, 3\\)"):
        Flatten(3)(np.ones((2, 3)))
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(Linear(2, 3, bias=False)) == "Linear(in_features=2, out_features=3, bias=False)"


def test_identity_passes_through_and_accepts_args():
    x = np.arange(6.0).reshape(2, 3)
    ident = Identity(54, unused="x")
    assert ident(x) is x
    np.testing.assert_array_equal(ident.backward(x), x)


# ---------------------------------------------------------------------- threaded GEMMs
@pytest.fixture(params=[2, 3, 4])
def force_parallel(request, monkeypatch):
    """Run Linear's GEMMs on 2, 3 or 4 threads, however small the work."""
    from cnnkit.nn import _parallel
    from cnnkit.nn import _kernels as F
    if _parallel._blas is None:
        pytest.skip("NumPy's OpenBLAS not found: the kernels run serially")
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(_parallel, "_num_threads", request.param)  # restored after the test
    yield request.param
    F.set_num_threads(1)  # gives NumPy's BLAS its thread count back


@pytest.mark.parametrize("needs_input_grad,frozen", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 13)])
def test_linear_threaded_matches_torch(force_parallel, needs_input_grad, frozen, shape):
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(3)
    ours = Linear(13, 9)
    ref = torch.nn.Linear(13, 9)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.needs_input_grad = needs_input_grad
    ours.weight.requires_grad = not frozen
    ref.weight.requires_grad_(not frozen)
    rng = _rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape[:-1] + (9,)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    ref(xt).backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours(x), ref(xt).detach().numpy(), rtol=RTOL, atol=ATOL)
    gx = ours.backward(g)
    if needs_input_grad:
        assert gx.shape == x.shape and gx.dtype == np.float32
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    else:
        assert gx is None
    if frozen:
        assert ours.weight.grad is None
    else:
        np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours.bias.grad, ref.bias.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_linear_threaded_gradcheck(force_parallel):
    cnnkit.manual_seed(0)
    assert gradcheck(Linear(6, 5), _rng(2).standard_normal((4, 6)))


def test_linear_grads_accumulate_and_are_not_shared_between_steps():
    """The first backward hands its fresh gradient arrays to the parameters (no copy); a
    second backward adds into them, and a gradient kept from an earlier step never changes."""
    layer = Linear(5, 4)
    rng = _rng(4)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    layer(x)
    layer.backward(g)
    first_w, first_b = layer.weight.grad, layer.bias.grad
    kept_w, kept_b = first_w.numpy().copy(), first_b.numpy().copy()
    layer(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * kept_w, rtol=1e-6)
    np.testing.assert_allclose(layer.bias.grad, 2 * kept_b, rtol=1e-6)
    layer.weight.grad = layer.bias.grad = None   # zero_grad(set_to_none=True)
    old_w = np.array(first_w)
    layer(2 * x)
    layer.backward(g)
    np.testing.assert_array_equal(first_w, old_w)   # the old step's array was not reused
    assert layer.weight.grad is not first_w
    np.testing.assert_allclose(layer.weight.grad, 2 * kept_w, rtol=1e-5)


# ---------------------------------------------------------------------- Flatten of NHWC memory
@pytest.mark.parametrize("shape", [(3, 5, 2, 2), (2, 4, 1, 3), (4, 7, 1, 1), (2, 6, 3, 3), (2, 1, 2, 2)])
def test_flatten_nhwc_input_matches_nchw(shape):
    """An NCHW-shaped view of NHWC memory (cnnkit's conv / pooling outputs) flattens in
    PyTorch's (C, H, W) order (small maps take the per-pixel copy)."""
    rng = _rng(5)
    n, c, h, w = shape
    x = np.ascontiguousarray(rng.standard_normal(shape).astype(np.float32).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    layer = Flatten()
    y = layer(x)
    assert y.flags.c_contiguous and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.ascontiguousarray(x).reshape(n, -1))
    g = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(g), g.reshape(shape))
    assert gradcheck(Flatten(), x.astype(np.float64))


def test_flatten_nhwc_input_threaded(force_parallel):
    rng = _rng(6)
    x = np.ascontiguousarray(rng.standard_normal((7, 2, 2, 9))).transpose(0, 3, 1, 2)   # (7, 9, 2, 2)
    layer = Flatten()
    y = layer(x)
    np.testing.assert_array_equal(y, np.ascontiguousarray(x).reshape(7, -1))
    np.testing.assert_array_equal(layer.backward(y), x)


def test_flatten_nhwc_matches_torch_in_a_conv_net():
    """Conv (NHWC memory) -> MaxPool -> Flatten -> Linear: outputs and every gradient as PyTorch."""
    torch = pytest.importorskip("torch")
    from cnnkit.nn import Conv2d, MaxPool2d, Sequential
    cnnkit.manual_seed(7)
    ours = Sequential(Conv2d(3, 8, 3, padding=1), MaxPool2d(2), Flatten(), Linear(8 * 2 * 2, 5))
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 2 * 2, 5))
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ours.state_dict().items()})
    rng = _rng(7)
    x = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    g = rng.standard_normal((4, 5)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    for (name, p), tp in zip(ours.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=RTOL, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("m,k,n,b_layout", [
    (3, 130, 20, "T"),   # few rows, b a transposed C array (weight.T), long K: the transposed product
    (3, 5, 20, "T"),     # short K: split of the columns
    (3, 130, 20, "C"),   # few rows, b C-contiguous: split of the columns
    (9, 130, 20, "T"),   # not 4x wider than tall: split of the columns
    (20, 5, 3, "C"),     # more rows than columns: split of the rows
    (0, 130, 4, "T"),    # empty
])
def test_parallel_matmul_all_splits(force_parallel, m, k, n, b_layout):
    from cnnkit.nn._parallel import parallel_matmul
    rng = _rng(8)
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((n, k)).T if b_layout == "T" else rng.standard_normal((k, n))
    out = parallel_matmul(a, b)
    assert out.shape == (m, n) and out.flags.c_contiguous and out.dtype == np.float64
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)
    out32 = parallel_matmul(a.astype(np.float32), b.astype(np.float32))
    assert out32.dtype == np.float32 and out32.flags.c_contiguous
    np.testing.assert_allclose(out32, a @ b, rtol=1e-4, atol=1e-5)


def test_linear_wide_output_matches_torch(force_parallel):
    """Linear whose output is >= 4x wider than the batch: the forward takes the transposed
    GEMM (threaded) and must still match PyTorch."""
    torch = pytest.importorskip("torch")
    cnnkit.manual_seed(9)
    ours = Linear(130, 40)
    ref = torch.nn.Linear(130, 40)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = _rng(9).standard_normal((5, 130)).astype(np.float32)
    y = ours(x)
    assert y.flags.c_contiguous and y.dtype == np.float32
    np.testing.assert_allclose(y, ref(torch.from_numpy(x)).detach().numpy(), rtol=RTOL, atol=ATOL)
