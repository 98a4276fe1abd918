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


# ---- a batch's images side by side (parallel.across): small images of a batch each get a thread of their own ----

needs_across = pytest.mark.skipif(not (numba.config.NUMBA_NUM_THREADS >= 2 and _parallel.run(
    lambda: crfcore._runtime.threads.layer()) in _parallel._THREADSAFE_LAYERS),
    reason="images side by side need 2 Numba threads and a thread-safe threading layer (TBB or OpenMP)")


@needs_across
def test_across_runs_items_side_by_side_on_one_thread_each():
    """Every item runs once, its result in its place; the items run on two threads at once (each waits until the
    other has started), each with one Numba thread, and nested run() calls run in place (no deadlock)."""
    both = threading.Barrier(2, timeout=30)
    seen = {}

    def item(i):
        if i < 2:
            both.wait()  # both first items run at once, or this times out
        seen[i] = (threading.get_ident(), numba.get_num_threads())
        return _parallel.run(lambda: 10 * i)

    assert _parallel.run(_parallel.across, item, 7) == [10 * i for i in range(7)]
    width = min(7, numba.get_num_threads())
    assert len({ident for ident, _ in seen.values()}) == width
    assert {n for _, n in seen.values()} == {numba.get_num_threads() // width}  # each its share of the threads
    assert _parallel.run(numba.get_num_threads) == numba.get_num_threads()  # the compute thread's count restored
    seen.clear()
    assert _parallel.run(_parallel.across, lambda i: seen.setdefault(i, threading.get_ident()), 6, 1) == [
        seen[i] for i in range(6)]
    assert len(set(seen.values())) == 1  # at_once=1: one at a time


@needs_across
def test_across_raises_the_first_error_whichever_thread_had_it():
    """Two items fail on two threads, one 0.2 s after the other: the first error is raised, whether the compute
    thread or a helper had it (the compute thread's own, later error used to win)."""
    import time

    for _ in range(4):  # which thread takes which item varies
        both, lock, order = threading.Barrier(2, timeout=30), threading.Lock(), []

        def item(i):
            both.wait()
            with lock:
                first = not order
                order.append(threading.get_ident())
            if first:
                raise ValueError("first")
            time.sleep(0.2)
            raise RuntimeError("second")

        with pytest.raises(ValueError, match="first"):
            _parallel.run(_parallel.across, item, 2)


@needs_across
def test_across_raises_the_first_error_and_takes_no_more_items():
    ran = []

    def item(i):
        ran.append(i)
        if i == 1:
            raise ValueError("image 1 is bad")
        threading.Event().wait(0.05)
        return i

    with pytest.raises(ValueError, match="image 1 is bad"):
        _parallel.run(_parallel.across, item, 40)
    assert len(ran) < 40


@needs_across
@pytest.mark.parametrize("n_lab", [2, 5])
def test_a_batch_side_by_side_equals_its_images_one_by_one(n_lab, monkeypatch):
    """A batch of small images runs its images on separate threads (one Numba thread each): the output, and the
    backward's gradients (logits, image, weights, compatibility, widths), equal those of each image alone, bit for
    bit, also when the batch is not a multiple of the threads and the images differ in content."""
    from crfcore import inference

    monkeypatch.setenv("CRFCORE_FIRST_CALL", "compile")  # the kernels, not NumPy's first-call path
    rng = np.random.default_rng(n_lab)
    images = rng.integers(0, 256, size=(5, 30, 44, 3), dtype=np.uint8)
    images[1] //= 8  # a flatter image: fewer lattice vertices, a different cost
    logits = rng.normal(scale=2.0, size=(5, 30, 44, n_lab)).astype(np.float32)
    g = rng.normal(size=logits.shape).astype(np.float32)
    calls = []
    monkeypatch.setattr(_parallel, "across", lambda fn, n, at_once=None, f=_parallel.across: calls.append(n) or f(
        fn, n, at_once))
    out, res = crfcore.meanfield_fwd(logits, images, n_iter=3)
    batch = crfcore.meanfield_bwd(res, g)
    assert calls == [5, 5], "the batch did not go across threads"
    monkeypatch.setattr(inference, "ACROSS_MAX_PIXELS", 0)  # one image at a time, as before
    for i in range(5):
        o, r = crfcore.meanfield_fwd(logits[i], images[i], n_iter=3)
        np.testing.assert_array_equal(out[i], o)
        one = crfcore.meanfield_bwd(r, g[i])
        np.testing.assert_array_equal(batch.logits[i], one.logits)
        np.testing.assert_array_equal(batch.image[i], one.image)
    serial_out, serial_res = crfcore.meanfield_fwd(logits, images, n_iter=3)
    serial = crfcore.meanfield_bwd(serial_res, g)
    np.testing.assert_array_equal(out, serial_out)
    for field in batch._fields:  # the batch's sums over images, summed in the images' order either way
        np.testing.assert_array_equal(getattr(batch, field), getattr(serial, field), err_msg=field)
