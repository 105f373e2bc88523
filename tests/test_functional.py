"""cnnkit.nn.functional: im2col / col2im, sizes, padding, softmax, the functional conv and pools."""

import numpy as np
import pytest

from cnnkit.nn import _kernels as F
from cnnkit.nn._buffers import Workspace


def naive_im2col(x, k, s, d, pads, groups):
    """Reference by explicit loops (tests only): x NHWC -> (G, N, Ho, Wo, kh, kw, Cg)."""
    n, h, w, c = x.shape
    t, b, l, r = pads
    xp = np.zeros((n, h + t + b, w + l + r, c), x.dtype)
    xp[:, t:t + h, l:l + w] = x
    ho = (h + t + b - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + l + r - d[1] * (k[1] - 1) - 1) // s[1] + 1
    cg = c // groups
    out = np.zeros((groups, n, ho, wo, k[0], k[1], cg), x.dtype)
    for gi in range(groups):
        for i in range(ho):
            for j in range(wo):
                for a in range(k[0]):
                    for bb in range(k[1]):
                        out[gi, :, i, j, a, bb] = xp[:, i * s[0] + a * d[0], j * s[1] + bb * d[1], gi * cg:(gi + 1) * cg]
    return out


IM2COL_CASES = [
    ((2, 5, 6, 3), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),
    ((1, 7, 6, 4), (3, 2), (2, 1), (1, 2), (0, 1, 2, 0), 2),
    ((2, 4, 4, 2), (3, 3), (2, 2), (1, 1), (3, 3, 3, 3), 1),
    ((1, 9, 8, 3), (5, 5), (2, 3), (1, 1), (2, 2, 1, 2), 3),
]


@pytest.mark.parametrize("shape,k,s,d,pads,groups", IM2COL_CASES)
def test_im2col_matches_naive_loops_and_col2im_is_its_adjoint(shape, k, s, d, pads, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    ref = naive_im2col(x, k, s, d, pads, groups)
    ho, wo = ref.shape[2:4]
    cols = F.im2col(x, k, s, d, pads, (ho, wo), groups)
    np.testing.assert_array_equal(cols, ref)
    # Adjoint: <im2col(x), c> == <x, col2im(c)> for any c.
    c = rng.standard_normal(cols.shape)
    back = F.col2im(c, shape[1:3], s, d, pads)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=1e-10)


@pytest.mark.parametrize("shape,k,s,d,pads,groups", [c for c in IM2COL_CASES if c[5] == 1])
def test_channels_first_im2col_matches_naive_loops(shape, k, s, d, pads, groups):
    from cnnkit.nn._im2col import im2col_channels_first
    x = np.random.default_rng(0).standard_normal(shape)          # NHWC
    ref = naive_im2col(x, k, s, d, pads, 1)[0]                    # (N, Ho, Wo, kh, kw, C)
    ho, wo = ref.shape[1:3]
    cols = im2col_channels_first(x.transpose(0, 3, 1, 2), k, s, d, pads, (ho, wo))
    np.testing.assert_array_equal(cols, ref.transpose(5, 3, 4, 0, 1, 2))


def test_im2col_reuses_given_buffer_even_if_dirty():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 4, 2))
    args = ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (4, 4), 1)
    buf = np.full((1, 1, 4, 4, 3, 3, 2), 7.0)
    np.testing.assert_array_equal(F.im2col(x, *args, out=buf), F.im2col(x, *args))


def test_same_padding_and_output_sizes():
    assert F.same_padding(28, 3, 1) == (1, 1)
    assert F.same_padding(28, 4, 1) == (1, 2)
    assert F.same_padding(28, 3, 1, dilation=2) == (2, 2)
    assert F.same_padding(224, 3, 2) == (0, 1)
    assert F.same_padding(225, 3, 2) == (1, 1)
    assert F.same_padding(4, 1, 3) == (0, 0)
    assert F.resolve_conv_padding("valid", (5, 5), (3, 3), (1, 1), (1, 1)) == (0, 0, 0, 0)
    assert F.resolve_conv_padding((1, 2), (5, 5), (3, 3), (1, 1), (1, 1)) == (1, 1, 2, 2)
    assert F.conv_output_size(28, 5, 1, 0) == 24
    assert F.conv_output_size(7, 3, 2, 2) == 4


def test_pool_output_size_matches_torch():
    torch = pytest.importorskip("torch")
    for size in range(3, 12):
        for k in (2, 3):
            for s in (1, 2, 3):
                for p in range(0, k // 2 + 1):
                    for ceil in (False, True):
                        expect = torch.nn.functional.max_pool2d(torch.zeros(1, 1, size, size), k, s, p,
                                                                ceil_mode=ceil).shape[-1]
                        assert F.pool_output_size(size, k, s, p, ceil) == expect, (size, k, s, p, ceil)


def test_adaptive_windows_rule():
    m = F.adaptive_windows(5, 3)  # windows [0,2) [1,4) [3,5)
    np.testing.assert_allclose(m, [[.5, .5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, .5, .5]])


def test_functional_conv_and_pools_match_torch():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    np.testing.assert_allclose(F.conv2d(x, w, b, stride=2, padding=1, groups=2),
                               tf.conv2d(xt, wt, bt, stride=2, padding=1, groups=2).numpy(), rtol=1e-4, atol=1e-5)
    w2 = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(F.conv2d(x, w2, None, padding="same", dilation=2),
                               tf.conv2d(xt, torch.from_numpy(w2), padding="same", dilation=2).numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                               tf.max_pool2d(xt, 3, 2, 1, ceil_mode=True).numpy())
    np.testing.assert_allclose(F.avg_pool2d(x, 3, 2, 1, True, False),
                               tf.avg_pool2d(xt, 3, 2, 1, True, False).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(F.adaptive_avg_pool2d(x, (4, 3)),
                               tf.adaptive_avg_pool2d(xt, (4, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(F.pad2d(x, (1, 2, 0, 1)), tf.pad(xt, (1, 2, 0, 1)).numpy())


def test_conv2d_functional_errors():
    x = np.zeros((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\), got \(1, 3, 5, 5\)"):
        F.conv2d(x, np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="4-D input"):
        F.conv2d(x[0], np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="too small"):
        F.conv2d(x, np.zeros((2, 3, 7, 7), np.float32))
    with pytest.raises(ValueError, match="padding must be"):
        F.conv2d(x, np.zeros((2, 3, 3, 3), np.float32), padding="full")


def test_results_keep_float32():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out, cache = F.conv2d_forward(x, w, np.zeros(4, np.float32), padding=1)
    gx, gw, gb = F.conv2d_backward(np.ones_like(out), cache, w)
    for a in (out, gx, gw, gb, F.max_pool2d(x, 2), F.avg_pool2d(x, 3, 2, 1), F.adaptive_avg_pool2d(x, (3, 5)),
              F.adaptive_avg_pool2d(x, 1), F.softmax(x, 1), F.log_softmax(x, 1), F.logsumexp(x, 1)):
        assert a.dtype == np.float32


def test_softmax_family():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5)) * 50
    x[0, 0] = 1000.0  # stability
    sm = F.softmax(x, axis=1)
    np.testing.assert_allclose(sm.sum(1), 1.0)
    ref = np.log(np.sum(np.exp(x[1:] - 3.0), axis=1)) + 3.0
    np.testing.assert_allclose(F.logsumexp(x, axis=1)[1:], ref)
    assert np.isfinite(F.logsumexp(x, axis=1)).all()
    np.testing.assert_allclose(np.exp(F.log_softmax(x, axis=1)), sm, atol=1e-12)
    assert F.logsumexp(np.full((2, 3), -np.inf), axis=1).tolist() == [-np.inf, -np.inf]


def test_workspace_views_alias_by_name_and_grow():
    ws = Workspace()
    a = ws.get("a", (2, 3), np.float32)
    b = ws.get("a", (3, 2), np.float32)
    assert np.shares_memory(a, b)
    c = ws.get("b", (2, 3), np.float32)
    assert not np.shares_memory(a, c)
    big = ws.get("a", (10, 10), np.float32)
    assert big.shape == (10, 10) and big.flags.c_contiguous
    assert ws.get("a", (2,), np.float64).dtype == np.float64
    assert ws.nbytes() > 0
    ws.clear()
    assert ws.nbytes() == 0


@pytest.fixture
def force_parallel(monkeypatch):
    """Run every kernel on 3 threads, however small the work."""
    from cnnkit.nn import _parallel
    if _parallel._blas is None:
        pytest.skip("NumPy's OpenBLAS not found: the kernels run serially")
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(_parallel, "_num_threads", 3)  # restored after the test
    yield
    F.set_num_threads(1)  # gives NumPy's BLAS its thread count back


@pytest.mark.parametrize("groups,stride,k,o", [(1, 1, 3, 4), (1, 2, 3, 4), (2, 1, 3, 4), (4, 1, 3, 8), (1, 1, 5, 8)])
def test_parallel_kernels_match_serial(force_parallel, groups, stride, k, o):
    from cnnkit.nn import _conv_kernels
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 4, 9, 8))
    w = rng.standard_normal((o, 4 // groups, k, k))
    b = rng.standard_normal(o)
    par_out, cache = F.conv2d_forward(x, w, b, stride, 1, 1, groups)
    g = rng.standard_normal(par_out.shape)
    par = F.conv2d_backward(g, cache, w)
    mp = F.max_pool2d_forward(x, 2)
    ap = F.avg_pool2d_forward(x, 3, 2, 1)
    pools = (mp[0], F.max_pool2d_backward(mp[0] * 0 + 1, mp[1]), ap[0], F.avg_pool2d_backward(ap[0], ap[1]))
    F.set_num_threads(1)
    ser_out, cache = F.conv2d_forward(x, w, b, stride, 1, 1, groups)
    ser = F.conv2d_backward(g, cache, w)
    np.testing.assert_allclose(par_out, ser_out, rtol=1e-12, atol=1e-12)
    for a, s in zip(par, ser):
        np.testing.assert_allclose(a, s, rtol=1e-12, atol=1e-12)
    mp = F.max_pool2d_forward(x, 2)
    ap = F.avg_pool2d_forward(x, 3, 2, 1)
    for a, s in zip(pools, (mp[0], F.max_pool2d_backward(mp[0] * 0 + 1, mp[1]), ap[0],
                            F.avg_pool2d_backward(ap[0], ap[1]))):
        np.testing.assert_allclose(a, s, rtol=1e-12, atol=1e-12)
    # Small chunks: many chunks per thread.
    _conv_kernels.CHUNK_BYTES, saved = 64, _conv_kernels.CHUNK_BYTES
    try:
        F.set_num_threads(3)
        out2, cache = F.conv2d_forward(x, w, b, stride, 1, 1, groups)
        np.testing.assert_allclose(out2, ser_out, rtol=1e-12, atol=1e-12)
        for a, s in zip(F.conv2d_backward(g, cache, w), ser):
            np.testing.assert_allclose(a, s, rtol=1e-12, atol=1e-12)
    finally:
        _conv_kernels.CHUNK_BYTES = saved


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="positive"):
        F.set_num_threads(0)


def test_parallel_pool_survives_fork(force_parallel):
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    x = np.random.default_rng(6).standard_normal((6, 3, 8, 8))
    expect = F.max_pool2d(x, 2)  # starts the pool in the parent
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(F.max_pool2d, (x, 2)).get(timeout=60)
    np.testing.assert_array_equal(got, expect)


def test_parallel_matmul(force_parallel):
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((37, 5)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(F.parallel_matmul(a, b), a @ b, rtol=1e-12)
    a3 = rng.standard_normal((2, 4, 5))
    np.testing.assert_allclose(F.parallel_matmul(a3, b), a3 @ b, rtol=1e-12)
