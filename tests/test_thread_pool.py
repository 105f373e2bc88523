"""nn._thread_pool and parallel_for on it: parts in order, errors re-raised after every part
has finished, one region at a time, nesting serial, a clean stop."""

import threading
import time

import numpy as np
import pytest

from cnnkit.nn import _parallel
from cnnkit.nn._thread_pool import ThreadPool


@pytest.fixture
def pool():
    p = ThreadPool(2)
    yield p
    p.shutdown()


def test_each_part_runs_once_and_results_come_in_order(pool):
    seen = []
    out = pool.run(lambda a, b: (seen.append((a, b, threading.current_thread().name)), a * 10 + b)[1],
                   [(0, 1), (2, 3), (4, 5)])
    assert out == [1, 23, 45]
    assert sorted((a, b) for a, b, _ in seen) == [(0, 1), (2, 3), (4, 5)]
    names = {b: name for _, b, name in seen}
    assert names[1] == threading.current_thread().name            # part 0: the caller
    assert len({names[3], names[5]} - {names[1]}) == 2             # the others: two workers


def test_fewer_parts_than_threads_and_reuse(pool):
    for k in range(1, 4):
        assert pool.run(lambda a: a, [(i,) for i in range(k)]) == list(range(k))
    with pytest.raises(ValueError, match="4 parts for 3 threads"):
        pool.run(lambda a: a, [(0,), (1,), (2,), (3,)])


def test_a_worker_error_is_raised_after_every_part_finished(pool):
    finished = []

    def part(i):
        if i == 1:
            raise KeyError("worker part")
        time.sleep(0.05)
        finished.append(i)
        return i

    with pytest.raises(KeyError, match="worker part"):
        pool.run(part, [(0,), (1,), (2,)])
    assert sorted(finished) == [0, 2]                # nothing still running when it raised
    assert pool.run(lambda i: i, [(0,), (1,), (2,)]) == [0, 1, 2]   # and the pool still works


def test_the_callers_error_comes_first_and_waits_for_the_workers(pool):
    finished = []

    def part(i):
        if i == 0:
            raise ValueError("caller part")
        time.sleep(0.05)
        finished.append(i)
        raise KeyError("later")

    with pytest.raises(ValueError, match="caller part"):
        pool.run(part, [(0,), (1,), (2,)])
    assert sorted(finished) == [1, 2]


def test_two_callers_take_turns(pool):
    # Regions from two threads do not interleave: each sees its own three parts together.
    inside = []
    lock = threading.Lock()

    def part(tag, i):
        with lock:
            inside.append(tag)
        time.sleep(0.01)
        with lock:
            inside.append(-tag)
        return tag

    results = {}
    threads = [threading.Thread(target=lambda t=t: results.setdefault(t, pool.run(part, [(t, i) for i in range(3)])))
               for t in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {1: [1, 1, 1], 2: [2, 2, 2]}
    first = inside[0]
    assert sorted(inside[:6]) == sorted([first] * 3 + [-first] * 3)   # one region, then the other


def test_shutdown_stops_the_threads():
    p = ThreadPool(2, name="stop_test")
    threads = [w.thread for w in p._workers]
    assert all(t.is_alive() for t in threads)
    p.shutdown()
    assert not any(t.is_alive() for t in threads) and p.size == 1


def test_parallel_for_splits_and_nests_serially(monkeypatch):
    if _parallel._blas is None:
        pytest.skip("NumPy's OpenBLAS not found: parallel_for runs serially")
    _parallel.set_num_threads(3)                      # tests/conftest.py restores the default
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)
    inner = []

    def part(a, b):
        inner.append(_parallel.parallel_for(4, lambda c, d: (c, d), 1 << 30))   # nested: one part
        return (a, b)

    assert _parallel.parallel_for(9, part, 1 << 30) == [(0, 3), (3, 6), (6, 9)]
    assert inner == [[(0, 4)]] * 3
    with pytest.raises(ZeroDivisionError):
        _parallel.parallel_for(9, lambda a, b: 1 // (a - 3), 1 << 30)
    assert _parallel.parallel_for(9, lambda a, b: float(np.sum(np.arange(a, b))), 1 << 30) == [3.0, 12.0, 21.0]


def test_an_interrupt_while_waiting_still_waits_for_the_workers(pool, monkeypatch):
    # Ctrl-C raised inside the wait: the region still ends only when every worker has,
    # and the next region gets its own results, not a late "done" of the last one.
    from cnnkit.nn import _thread_pool
    real = _thread_pool._wait
    raised = []

    def interrupted_wait(done):
        if not raised:
            raised.append(1)
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                real(done)
                return exc
        return real(done)

    monkeypatch.setattr(_thread_pool, "_wait", interrupted_wait)
    finished = []

    def slow(i):
        time.sleep(0.05)
        finished.append(i)
        return i

    with pytest.raises(KeyboardInterrupt):
        pool.run(slow, [(0,), (1,), (2,)])
    assert sorted(finished) == [0, 1, 2]
    assert pool.run(lambda i: i * 2, [(0,), (1,), (2,)]) == [0, 2, 4]


@pytest.fixture(params=["spinning end", "lock only"])
def end_kind(request, monkeypatch):
    """The pool's two ways to end a region: the caller spinning on the worker's flag (with
    the compiled kernels), and the plain lock."""
    from cnnkit.nn import _jit_spin
    if request.param == "spinning end":
        pytest.importorskip("numba")
        if not _jit_spin.available():
            pytest.skip("compiled kernels switched off here")
    else:
        monkeypatch.setattr(_jit_spin, "available", lambda: False)
    return request.param


def test_many_short_regions_each_wait_for_their_own_parts(end_kind):
    # Regions far shorter than a thread's wake-up, back to back: each must return only once
    # every part of *that* region has written its result (a flag left from the previous
    # region must not end the next one early).
    p = ThreadPool(1)
    try:
        rng = np.random.default_rng(0)
        for region in range(300):
            out = np.zeros(2, np.int64)
            delay = [0.0, float(rng.choice([0.0, 0.0005]))]

            def part(i):
                if delay[i]:
                    time.sleep(delay[i])
                out[i] = region * 2 + i
                return i

            assert p.run(part, [(0,), (1,)]) == [0, 1]
            assert out.tolist() == [region * 2, region * 2 + 1]
    finally:
        p.shutdown()


def test_the_spin_waits_for_the_flag_and_gives_up_after_its_limit(monkeypatch):
    pytest.importorskip("numba")
    from cnnkit.nn import _jit_spin
    if not _jit_spin.available():
        pytest.skip("compiled kernels switched off here")
    flag = _jit_spin.new_flag()
    assert flag.ctypes.data % 64 == 0 and flag.dtype == np.int64
    _jit_spin.publish(flag, 7)
    assert flag[0] == 7 and _jit_spin.wait_for(flag, 7)
    monkeypatch.setattr(_jit_spin, "MAX_SPIN_CYCLES", 1000)
    assert not _jit_spin.wait_for(flag, 8)             # never published: gives up
    monkeypatch.setattr(_jit_spin, "MAX_SPIN_CYCLES", 10 ** 10)     # seconds, far beyond the 20 ms
    threading.Timer(0.02, _jit_spin.publish, (flag, 8)).start()
    assert _jit_spin.wait_for(flag, 8)                 # published by another thread later


def test_the_spin_limits_without_a_cycle_counter(tmp_path):
    # Other CPUs than x86-64 count spin iterations instead of reading the TSC: compiled
    # that way (in a fresh process, with its own Numba cache), the loops still see a
    # published flag and still give up after their limit.
    pytest.importorskip("numba")
    import os
    import subprocess
    import sys
    code = (
        "from cnnkit.nn import _jit_atomics as A\n"
        "A._X86 = False\n"
        "import numpy as np\n"
        "f = np.zeros(1, np.int64)\n"
        "A.publish(f, 3, 1000)\n"
        "assert f[0] == 3 and A.wait_for(f, 3, 10 ** 6)\n"
        "assert not A.wait_for(f, 4, 10 ** 6)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_pool_with_more_threads_than_cpus_never_spins(monkeypatch):
    # The spinning caller would hold a CPU its own worker may need.
    pytest.importorskip("numba")
    from cnnkit.nn import _jit_spin, _thread_pool
    waits = []
    monkeypatch.setattr(_jit_spin, "wait_for", lambda *a: waits.append(a) or True)
    monkeypatch.setattr(_thread_pool, "usable_cpus", lambda: 2)
    for workers, spins in ((1, True), (2, False)):
        p = ThreadPool(workers)
        try:
            waits.clear()
            assert p.run(lambda i: i, [(i,) for i in range(workers + 1)]) == list(range(workers + 1))
            assert bool(waits) == (spins and _jit_spin.available())
        finally:
            p.shutdown()
