"""crfcore called from several Python threads at once: same results, one parallel computation at a time."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import crfcore
from crfcore._parallel import PARALLEL


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


def test_a_call_waits_while_another_holds_the_cores():
    logits, image = _inputs(0)
    done = threading.Event()

    def call():
        crfcore.meanfield(logits, image, n_iter=2)
        done.set()

    with PARALLEL:  # as another thread's running image would
        worker = threading.Thread(target=call)
        worker.start()
        assert not done.wait(0.5), "meanfield ran its kernels while another computation held the cores"
    worker.join(60)
    assert done.is_set()


def test_lattice_filter_from_threads():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3000, 4))
    v = rng.normal(size=(3000, 2))
    ref = crfcore.Lattice(f).filter(v)
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda _: crfcore.Lattice(f).filter(v), range(6)))
    for out in outs:
        np.testing.assert_array_equal(out, ref)
