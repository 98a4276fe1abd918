"""All of crfcore's parallel work runs on one compute thread, one image at a time.

Every parallel kernel already spreads over all of Numba's threads. Launching them from several OS threads (a
thread pool, TensorFlow's op threads running ``numpy_function``) would make several OpenMP thread teams, and
an idle team keeps spinning on the cores the busy one needs: on 2 cores, 224x224 images ran at 47 instead of
78 per second once a second Python thread had used crfcore. Numba's ``workqueue`` layer, the fallback where
neither OpenMP nor TBB is present, even aborts on concurrent launches. So the public entry points hand each
image's work to :func:`run`, which executes it on a single long-lived thread (FIFO across callers) with the
caller's Numba thread count; the callers keep running Python code meanwhile.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

_lock = threading.Lock()
_executor = None
_worker = None  # ident of the compute thread


def _reset_after_fork():
    global _executor, _worker
    _executor = None  # the child has no compute thread: make a new one on first use
    _worker = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _call(threads, fn, args, kwargs):
    global _worker
    _worker = threading.get_ident()
    numba.set_num_threads(threads)  # the setting is per thread: take the caller's
    return fn(*args, **kwargs)


def run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on crfcore's compute thread (directly when already on it); returns its result
    or raises its exception."""
    global _executor
    if threading.get_ident() == _worker:
        return fn(*args, **kwargs)
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crfcore-compute")
        executor = _executor
    return executor.submit(_call, numba.get_num_threads(), fn, args, kwargs).result()
