"""Timing and memory helpers shared by the benchmarks: medians after a warm-up, interleaved peers, peak memory."""

import statistics
import time

import numba
import numpy as np


def _rss_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory(fn):
    """Peak resident memory of ``fn()`` above the process's resident memory before it, in MiB; None where
    Linux's counters are absent."""
    base = _rss_kib("VmRSS:")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        return None
    fn()
    peak = _rss_kib("VmHWM:")
    return None if base is None or peak is None else max(0.0, (peak - base) / 1024.0)


def timed(fn, repeats):
    """Median and spread (min, max) in seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def timed_interleaved(fns, repeats, rounds=None):
    """:func:`timed` for several functions called in turn (a, b, c, a, b, c, ...), each warmed up first: on a
    shared machine whose speed drifts, every peer then sees the same drift and their ratio stays fair. With a
    list ``rounds``, each round's seconds (one per function) are appended to it; the order within a round is
    shuffled (seeded) so that no function always follows the same one."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    order = list(range(len(fns)))
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        if rounds is not None:
            rng.shuffle(order)
        this = [0.0] * len(fns)
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            this[i] = time.perf_counter() - t0
            times[i].append(this[i])
        if rounds is not None:
            rounds.append(this)
    return [(statistics.median(t), min(t), max(t)) for t in times]


def _with_threads(n, fn):
    def run():
        before = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            return fn()
        finally:
            numba.set_num_threads(before)
    return run
