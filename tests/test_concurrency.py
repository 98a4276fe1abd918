"""crfcore called from several Python threads at once: same results, all parallel work on one compute thread."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import crfcore
from crfcore._runtime import parallel as _parallel


def _inputs(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    logits = rng.normal(scale=2.0, size=(40, 56, 3)).astype(np.float32)
    return logits, image


def _forward_backward(seed):
    logits, image = _inputs(seed)
    out, res = crfcore.meanfield_fwd(logits, image, n_iter=3)
    grads = crfcore.meanfield_bwd(res, np.ones_like(out))
    return out, grads.logits, grads.compat


def test_threads_get_the_serial_results():
    serial = [_forward_backward(seed) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(_forward_backward, range(8)))
    for a, b in zip(serial, threaded):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_a_call_waits_while_another_holds_the_cores(monkeypatch):
    # the kernels, never NumPy's first-call path (which runs in the caller): this test is about the compute thread
    monkeypatch.setenv("CRFCORE_FIRST_CALL", "compile")
    logits, image = _inputs(0)
    holding = threading.Event()
    release = threading.Event()
    done = threading.Event()

    def hold():  # another caller's image, running on the compute thread until released
        holding.set()
        release.wait(30)

    holder = threading.Thread(target=_parallel.run, args=(hold,))
    holder.start()
    assert holding.wait(30), "the holder's work never started on the compute thread"

    def call():
        crfcore.meanfield(logits, image, n_iter=2)
        done.set()

    worker = threading.Thread(target=call)
    worker.start()
    assert not done.wait(0.5), "meanfield ran its kernels while another computation held the cores"
    release.set()
    worker.join(60)
    holder.join(60)
    assert done.is_set()


def test_work_runs_on_one_thread_with_the_callers_thread_count():
    seen = set()

    def where():
        seen.add(threading.get_ident())
        return numba.get_num_threads()

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert _parallel.run(where) == 1
        numba.set_num_threads(before)
        assert _parallel.run(where) == before
    finally:
        numba.set_num_threads(before)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: _parallel.run(where), range(6)))
    assert len(seen) == 1 and threading.get_ident() not in seen
    assert _parallel.run(lambda: _parallel.run(where)) == before  # re-entrant: no deadlock


def test_errors_reach_the_caller():
    with pytest.raises(ValueError, match="finite"):
        crfcore.Lattice(np.array([[0.0, np.nan]]))


def test_lattice_filter_from_threads():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3000, 4))
    v = rng.normal(size=(3000, 2))
    ref = crfcore.Lattice(f).filter(v)
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda _: crfcore.Lattice(f).filter(v), range(6)))
    for out in outs:
        np.testing.assert_array_equal(out, ref)
