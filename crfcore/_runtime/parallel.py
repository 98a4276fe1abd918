"""All of crfcore's parallel work runs on one compute thread, one image at a time (or a batch's small images side by
side, :func:`across`), and can be cancelled.

Every parallel kernel already spreads over all of Numba's threads. Launching them from several OS threads (a
thread pool, TensorFlow's op threads running ``numpy_function``) would make several thread teams that fight over
the cores, and Numba's ``workqueue`` layer even aborts on concurrent launches. So the public entry points hand each
image's work to :func:`run`, which executes it on a single long-lived thread (FIFO across callers) with the
caller's Numba thread count; the callers keep running Python code meanwhile.

**Interrupts.** A caller interrupted while it waits (Ctrl-C's ``KeyboardInterrupt``, any exception raised in it)
cancels its work: the compute thread stops at the next :func:`checkpoint` (between kernel calls: lattice phases,
filterings, iterations), so the process can exit and the next call starts at once instead of queueing behind
abandoned work.

**Fork.** Before a fork an idle compute thread is stopped, and a child forked after crfcore has run (``os.fork``,
``multiprocessing``'s fork start method) makes a new one on first use, with new locks. The threading layer must be
fork-safe too: see :mod:`crfcore._runtime.threads`.
"""

import os
import signal
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout  # the builtin TimeoutError from Python 3.11 on

import numba

from . import threads as _threads


class Cancelled(Exception):
    """Raised on the compute thread when the caller of the work it runs has given up on it."""


class _Job:
    __slots__ = ("cancelled",)

    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


_lock = threading.Lock()
_executor = None
_current = None  # the job the compute thread runs
_local = threading.local()  # ``computing``: True on the compute thread and on helpers running its images (across)


#: Signals that the compute thread, and the Numba worker threads started with them blocked (they inherit the mask),
#: never take: the kernel then hands a Ctrl-C or a kill only to a thread that can act on it, the caller's, which
#: waits in an interruptible lock and cancels the work.
_CALLER_SIGNALS = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
                   if hasattr(signal, name)}


def _compute_thread_start():
    if hasattr(signal, "pthread_sigmask"):  # POSIX; elsewhere signals only ever reach the main thread
        signal.pthread_sigmask(signal.SIG_BLOCK, _CALLER_SIGNALS)


_launched = False

#: How often (seconds) a caller waiting for its work wakes up. A signal is handled by whichever thread the kernel
#: hands it to; only the main thread acts on it (raises ``KeyboardInterrupt``), and only when it runs. A Ctrl-C taken
#: by another thread that does not block it (one started by another library, say) would otherwise leave the caller
#: asleep until the work ended; waking up this often bounds the delay to a tenth of a second.
_POLL_S = 0.1


def _launch_numba_threads():
    """Start Numba's threading layer with :data:`_CALLER_SIGNALS` blocked, so that the worker threads it creates
    (here, in the caller's thread: ``numba.get_num_threads`` starts the layer) inherit the block."""
    global _launched
    if _launched:
        return
    if hasattr(signal, "pthread_sigmask"):
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _CALLER_SIGNALS)
        try:
            numba.get_num_threads()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _launched = True


def _before_fork():
    """Stop an idle compute thread, and its helpers, before a fork (new ones start on the next call, in parent and
    child): a thread that has used TBB (the helpers too, when they ran a batch's images: :func:`across`) keeps it
    from shutting its workers down cleanly for the fork, which Numba reports as "Unable to join threads to shut
    down before fork()"."""
    global _executor, _helpers
    if _executor is None or _current is not None or not _lock.acquire(blocking=False):
        return  # busy: the child still works, with Numba's warning
    try:
        executor, _executor = _executor, None
        helpers, _helpers = _helpers, None  # idle too: they only run the compute thread's work
    finally:
        _lock.release()
    executor.shutdown(wait=True)
    if helpers is not None:
        helpers.shutdown(wait=True)
    time.sleep(0.02)  # TBB's workers leave the finished thread's arena asynchronously: measured 5/10 forks warned
    # right after a first call without this pause, 0/10 with it


_helpers = None  # the helper threads of spread(): a ThreadPoolExecutor, made on first use


def spread(fn, n):
    """``fn(i)`` for ``i`` in ``range(n)``, split in contiguous shares between the calling thread (the compute
    thread) and up to ``numba.get_num_threads() - 1`` helper threads; returns once all have run and raises the first
    error. For serial ``nogil`` kernels, whose compile is a fraction of a ``prange`` kernel's (see
    ``docs/design/compile-time.md``): they start no Numba thread team, so the one-team rule above still holds.
    Helper threads block the caller's signals like the compute thread."""
    threads = min(int(n), numba.get_num_threads())
    if threads <= 1:
        for i in range(n):
            fn(i)
        return
    helpers = _helper_pool()
    bounds = [k * n // threads for k in range(threads + 1)]

    def share(k):
        for i in range(bounds[k], bounds[k + 1]):
            fn(i)

    futures = [helpers.submit(share, k) for k in range(1, threads)]
    try:
        share(0)
    finally:
        wait(futures)
    for f in futures:
        f.result()  # raises a helper's error


def _helper_pool():
    global _helpers
    with _lock:
        if _helpers is None:
            _helpers = ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                          thread_name_prefix="crfcore-helper", initializer=_compute_thread_start)
        return _helpers


#: Threading layers that may launch parallel kernels from several threads at once (Numba's ``workqueue`` aborts).
_THREADSAFE_LAYERS = ("tbb", "omp")


def across(fn, n, at_once=None):
    """``[fn(i) for i in range(n)]``, the items spread over the compute thread (the caller) and helper threads:
    ``min(n, at_once, numba.get_num_threads())`` items at a time, each thread taking the next item when it is done
    with one and running its kernels on its share of Numba's threads (one each when there are as many items as
    threads). For batches of images too small to keep every thread busy on one image (on 2 cores, a 224x224 image
    on 2 threads runs about 1.1x faster than on 1, two images at once nearly 2x); ``at_once`` bounds the memory of
    the items in flight.

    Serial for fewer than two items or threads, or a threading layer that does not take kernel launches from
    several threads at once (:data:`_THREADSAFE_LAYERS`). Raises the first error (the other threads take no new items
    then). Each thread runs its items as the compute thread would: nested :func:`run` calls run in place,
    :func:`spread` gets the thread's share (the helper pool holds enough threads for all of them) and
    :func:`checkpoint` cancels them.
    """
    total = numba.get_num_threads()
    threads = min(int(n), total, int(at_once) if at_once is not None else total)
    if threads < 2 or _threads.layer() not in _THREADSAFE_LAYERS:
        return [fn(i) for i in range(n)]
    share = total // threads  # threads * share <= total: spread() inside the items never waits for a helper
    results = [None] * n
    items, taking = iter(range(n)), threading.Lock()
    failed = []

    def work():
        previous, was_computing = numba.get_num_threads(), getattr(_local, "computing", False)
        numba.set_num_threads(share)
        _local.computing = True
        try:
            while not failed:
                with taking:
                    i = next(items, None)
                if i is None:
                    return
                try:
                    results[i] = fn(i)
                except BaseException as e:  # the first of all threads' errors is raised below
                    failed.append(e)
                    return
        finally:
            numba.set_num_threads(previous)
            _local.computing = was_computing

    helpers = _helper_pool()
    futures = [helpers.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        wait(futures)
    if failed:
        raise failed[0]
    return results


def _reset_after_fork():
    global _lock, _executor, _current, _launched, _helpers, _local
    _local = threading.local()
    _helpers = None  # the helper threads did not survive the fork
    _lock = threading.Lock()  # another thread may have held it at the fork
    _executor = None  # the child has no compute thread: make a new one on first use
    _current = None
    _launched = False  # the child's threading layer starts anew: start it with the signals blocked again


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_reset_after_fork)


def checkpoint():
    """Raise :class:`Cancelled` if the work running on the compute thread was abandoned by its caller."""
    job = _current
    if job is not None and job.cancelled:
        raise Cancelled("the caller was interrupted")


def _call(job, threads, fn, args, kwargs):
    global _current
    _local.computing = True
    if job.cancelled:
        raise Cancelled("the caller was interrupted before the work started")
    _current = job
    try:
        numba.set_num_threads(threads)  # the setting is per thread: take the caller's
        return fn(*args, **kwargs)
    finally:
        _current = None


def run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on crfcore's compute thread (directly when already on it); returns its result
    or raises its exception. If the caller is interrupted while waiting, the work is cancelled (see above)."""
    global _executor
    if getattr(_local, "computing", False):
        checkpoint()
        return fn(*args, **kwargs)
    _threads.configure()
    _launch_numba_threads()
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crfcore-compute",
                                           initializer=_compute_thread_start)
        executor = _executor
    job = _Job()
    future = executor.submit(_call, job, numba.get_num_threads(), fn, args, kwargs)
    try:
        while not future.done():  # wake up now and then: a signal another thread took is acted on here (_POLL_S)
            wait([future], timeout=_POLL_S)
        return future.result()
    except BaseException:
        # KeyboardInterrupt (or any exception) in the caller, or the work's own error: either way nothing waits
        # for this work any more, so it must not keep the cores
        job.cancel()
        future.cancel()  # still queued behind another caller's work: never starts
        if not future.done():
            try:  # it stops at its next checkpoint (a kernel call away); a second Ctrl-C skips the wait
                future.exception(timeout=10.0)
            except (CancelledError, FutureTimeout):
                pass
        raise
