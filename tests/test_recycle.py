"""The recycler that hands layer outputs the memory of arrays nobody uses any more
(``cnnkit.nn._recycle``): it must reuse dropped arrays, and never one that anything can
still reach."""

import threading

import numpy as np
import pytest
from float32_tolerance import assert_float32_close

import cnnkit
import cnnkit.nn as nn
from cnnkit.nn import _recycle
from cnnkit.nn._recycle import Recycler

MB = 1 << 20


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_a_dropped_array_is_reused():
    r = Recycler()
    a = r.empty((512, 512), np.float32)
    address = _address(a)
    del a
    b = r.empty((512, 512), np.float32)
    assert _address(b) == address
    assert b.shape == (512, 512) and b.dtype == np.float32 and b.flags.c_contiguous and b.flags.writeable


@pytest.mark.parametrize("holder", ["array", "view", "view_of_view", "memoryview", "list", "transpose"])
def test_an_array_still_reachable_is_never_reused(holder):
    r = Recycler()
    a = r.empty((512, 512), np.float32)
    a.fill(7.0)
    address = _address(a)
    keep = {
        "array": lambda: a,
        "view": lambda: a[1:],
        "view_of_view": lambda: a.reshape(-1)[10:].reshape(-1, 2),
        "memoryview": lambda: memoryview(a),
        "list": lambda: [a],
        "transpose": lambda: a.T,
    }[holder]()
    del a
    b = r.empty((512, 512), np.float32)
    assert _address(b) != address
    b.fill(-1.0)
    kept = np.asarray(keep[0] if holder == "list" else keep)
    assert np.all(kept == 7.0)                     # untouched by the new array's writes


def test_same_size_other_shape_and_dtype_reuse_the_bytes():
    r = Recycler()
    a = r.empty((256, 1024), np.float32)
    address = _address(a)
    del a
    b = r.empty((1 << 20,), np.uint8)             # 1 MB either way
    assert _address(b) == address and b.dtype == np.uint8 and b.shape == (1 << 20,)
    c = r.empty((1024, 256), np.float32)          # b still alive: fresh memory
    assert _address(c) != address


def test_zeros_clears_a_recycled_buffer():
    r = Recycler()
    a = r.empty((512, 512), np.float32)
    a.fill(3.0)
    del a
    z = r.zeros((512, 512), np.float32)
    assert not z.any()


def test_empty_like_keeps_the_memory_layout():
    r = Recycler()
    nhwc = np.empty((4, 32, 32, 64), np.float32)
    x = nhwc.transpose(0, 3, 1, 2)                 # an NCHW view of NHWC memory
    y = r.empty_like(x)
    assert y.shape == x.shape and y.strides == x.strides
    m = r.empty_like(x, dtype=bool)
    assert r.empty_like(x, dtype=np.dtype(np.uint8)).dtype == np.uint8
    assert m.shape == x.shape and m.dtype == bool and m.transpose(0, 2, 3, 1).flags.c_contiguous
    strided = np.empty((4, 64, 64, 64), np.float32)[:, ::2]
    s = r.empty_like(strided)                      # not a permuted dense array: NumPy's rule
    assert s.shape == strided.shape


def test_small_arrays_are_not_held():
    r = Recycler(min_bytes=MB)
    a = r.empty((16, 16), np.float32)
    assert a.shape == (16, 16) and r.held_bytes() == 0


def test_object_arrays_are_not_recycled():
    r = Recycler(min_bytes=0)
    a = r.empty((1000,), object)
    assert a.dtype == object and r.held_bytes() == 0


def test_stale_and_excess_idle_buffers_are_released():
    r = Recycler(stale_calls=3, max_idle_bytes=4 * MB)
    arrays = [r.empty((MB,), np.uint8) for _ in range(3)]
    assert r.held_bytes() == 3 * MB
    del arrays
    assert r.idle_bytes() == 3 * MB
    for _ in range(4):                              # other sizes: the 1 MB buffers go stale
        keep = r.empty((2 * MB,), np.uint8)
        del keep
    assert r.held_bytes() == 2 * MB

    r = Recycler(stale_calls=10 ** 6, max_idle_bytes=2 * MB)
    arrays = [r.empty((MB,), np.uint8) for _ in range(4)]
    del arrays
    fresh = r.empty((3 * MB,), np.uint8)            # a miss: idle bytes capped at 2 MB
    assert r.idle_bytes() <= 2 * MB
    assert fresh.nbytes == 3 * MB


def test_clear_releases_idle_but_not_used_buffers():
    r = Recycler()
    used = r.empty((MB,), np.uint8)
    idle = r.empty((2 * MB,), np.uint8)
    del idle
    r.clear()
    assert r.held_bytes() == MB
    used[:] = 1                                    # still a valid array


def test_empty_cache_releases_the_shared_recycler():
    a = _recycle.empty((3 * MB + 4,), np.uint8)
    del a
    assert _recycle.recycler.idle_bytes() >= 3 * MB
    cnnkit.nn.empty_cache()
    assert _recycle.recycler.idle_bytes() == 0


def test_disabled_recycler_is_plain_numpy():
    r = Recycler()
    r.enabled = False
    a = r.empty((512, 512), np.float32)
    address = _address(a)
    assert r.held_bytes() == 0
    del a
    b = r.empty((512, 512), np.float32)
    assert b.shape == (512, 512) and r.held_bytes() == 0
    del address


def test_threads_never_share_a_live_buffer():
    r = Recycler()
    errors = []
    start = threading.Barrier(4)

    def work(tag):
        start.wait()
        for i in range(200):
            a = r.empty((64, 1024), np.float32)     # 256 KB: recycled
            value = float(tag * 1000 + i)
            a.fill(value)
            if not np.all(a == value):              # another thread wrote into it
                errors.append((tag, i))
            del a

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert r.held_bytes() <= 4 * 256 * 1024          # at most one buffer per thread at a time


def test_a_kept_model_output_survives_the_next_steps():
    cnnkit.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
    x1 = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    x2 = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with cnnkit.no_grad():
        y1 = model(x1)
        snapshot = y1.copy()
        for _ in range(3):
            y2 = model(x2)
            del y2
    assert np.array_equal(y1, snapshot)
    again = model(x1)                               # training mode: caches kept too
    model.backward(np.ones_like(again))
    assert np.array_equal(y1, snapshot)
    # Training and inference may run other kernels (blocking, fused passes): equal up to the
    # float32 rounding of the two convolutions' sums (3*9 and 32*9 products).
    assert_float32_close(again, snapshot, 3 * 9 + 32 * 9)


def test_recycled_steps_give_the_same_results():
    """Recycled memory has garbage in it: every kernel must overwrite all of its output."""
    cnnkit.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 7 * 7, 10))
    x = np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((32, 10)).astype(np.float32)

    def step():
        model.zero_grad()
        out = model(x).copy()
        gx = model.backward(g).copy()
        return out, gx, [p.grad.numpy().copy() for p in model.parameters()]

    first = step()
    # Poison every idle buffer (NaN bytes) that a later step will be handed.
    held = _recycle.recycler._held
    poisoned = 0
    for entries in held.values():
        for entry in entries:
            if _recycle._ref_count(entry) == _recycle._IDLE_REFS:
                entry[0].fill(0xFF)
                poisoned += 1
    assert poisoned > 0
    for _ in range(2):
        again = step()
        np.testing.assert_array_equal(again[0], first[0])
        np.testing.assert_array_equal(again[1], first[1])
        for a, b in zip(again[2], first[2]):
            np.testing.assert_array_equal(a, b)


def test_sequential_backward_frees_saved_arrays():
    """Like PyTorch's graph, a Sequential's saved activations are released by backward():
    they are not held between steps, and a second backward needs a new forward."""
    cnnkit.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 14 * 14, 10))
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    out = model(x)

    def nodes():
        found, stack = [], [model._array_io[1].grad_fn]
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(e[0] for e in node.edges if isinstance(e, tuple))
        return found

    graph = nodes()
    # Conv2d -> ReLU -> MaxPool2d ran as one node; then Flatten and Linear.
    assert [n.function.__name__ for n in graph] == ["Linear", "Flatten", "Conv2dReluMaxPool"]
    assert all(n.ctx is not None for n in graph)
    model.backward(np.ones_like(out))
    assert all(n.ctx is None for n in graph)
    with pytest.raises(RuntimeError, match=r"Sequential.*backward\(\) called before forward\(\).*or twice"):
        model.backward(np.ones_like(out))
    model.zero_grad()
    out = model(x)                                 # a new forward: backward works again
    assert model.backward(np.ones_like(out)).shape == x.shape


@pytest.mark.parametrize("shape, dtype", [((512, 512), np.float32), ((3, 70001), np.float32), ((33333,), np.float64)])
def test_recycled_and_scratch_buffers_start_on_a_cache_line(shape, dtype):
    # MKL's GEMMs are measurably faster on 64-byte-aligned operands (see _buffers.ALIGNMENT);
    # NumPy's own allocator only promises 16 bytes, so this is checked, not assumed.
    from cnnkit.nn._buffers import ALIGNMENT, Workspace
    r = Recycler()
    held = [r.empty(shape, dtype) for _ in range(3)]          # three distinct buffers
    del held[1]
    held.append(r.empty(shape, dtype))                         # one recycled
    ws = Workspace()
    scratch = [ws.get(name, shape, dtype) for name in ("a", "b", "c")]
    for a in held + scratch:
        assert _address(a) % ALIGNMENT == 0
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
