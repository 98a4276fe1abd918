"""A process's first calls without waiting for Numba: NumPy serves them while a background process compiles.

Numba compiles crfcore's kernels on their first call and keeps them in its on-disk cache (``cache=True``); a fresh
install would otherwise wait about 20 s on its first :func:`crfcore.meanfield`. When the kernels a call needs are
neither compiled in this process nor in the cache, that call and the next ones are computed by
:mod:`crfcore.numpy_meanfield` (the same lattice; results agree with the kernels' to float rounding) while a
background Python process (``python -m crfcore.warmup``) compiles exactly those kernels into the cache; once it is
done, calls load them from the cache (under a second) and run at full speed. If it fails, calls compile in the
process as before.

Set the environment variable ``CRFCORE_FIRST_CALL=compile`` to compile in the calling process instead (every
result then comes from the compiled kernels, bit for bit the same from the first call on). Only inference
(:func:`crfcore.meanfield`, and :func:`crfcore.meanfield_fwd` without residuals) is served this way; training and
the other entry points compile as they are called.
"""

import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np

ENV = "CRFCORE_FIRST_CALL"
MODES = ("numpy", "compile")
#: Calls with more pixels than this (over the batch) compile: the NumPy lattice's memory grows with them, and on
#: such sizes the compile time is a small part of the work.
MAX_POINTS = 4_000_000

_lock = threading.Lock()
_jobs = {}  # _signature(...) -> (pid of the process that started it, Popen)


def mode():
    """``"numpy"`` (the default) or ``"compile"``, from :data:`ENV`."""
    value = os.environ.get(ENV, "numpy").strip().lower() or "numpy"
    if value not in MODES:
        raise ValueError(f"the environment variable {ENV}={os.environ[ENV]!r} must be one of {MODES}")
    return value


def _dispatchers(n_labels):
    """The compiled kernels an inference call runs (their other helpers compile with them)."""
    from . import _lattice_kernels as K
    from . import _meanfield_kernels as MK

    combine = MK.combine_softmax_pair if n_labels == 2 else MK.combine_softmax
    return (K.feature_range, K.build, K.blur_neighbours, K.invert_remap, K.splat, K.gather_rows, K.blur, K.scatter_rows,
            K.slice_, combine)


def _available(dispatcher):
    """Compiled in this process, or something of it in Numba's on-disk cache (its index file exists)."""
    if dispatcher.signatures:
        return True
    try:
        index = dispatcher._cache._cache_file._index_path  # Numba internals (0.5x-0.6x)
    except AttributeError:  # caching off, or another Numba: compile as usual
        return True
    return os.path.exists(index)


def kernels_ready(n_labels):
    """Whether an inference call with ``n_labels`` labels finds its kernels compiled or cached (by the presence
    of their cache index: a cache filled for other dtypes still compiles the missing ones in the process)."""
    return all(_available(k) for k in _dispatchers(n_labels))


def _signature(dtype, n_labels, spatial_shape, n_channels):
    """What fixes the compiled kernels' signatures: the dtype, two labels or more, the number of axes and channels,
    and whether each lattice's chunks need 32-bit offsets (see :class:`crfcore.Lattice`)."""
    from .lattice import chunk_size

    chunk = chunk_size(math.prod(spatial_shape))
    dims = len(spatial_shape)
    wide = tuple(chunk * (d + 1) > 1 << 16 for d in (dims, dims + n_channels))
    return (np.dtype(dtype).name, n_labels == 2, dims, int(n_channels)) + wide


def serve_with_numpy(dtype, n_labels, spatial_shape, n_channels, n_batch):
    """Whether this inference call should be computed by NumPy (starting the background compile it needs).

    True while the kernels are neither compiled nor cached and a background compile for calls of this kind
    (:func:`_signature`) is running or was just started.
    """
    if mode() == "compile":
        return False
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if int(n_batch) * math.prod(spatial_shape) > MAX_POINTS:
        return False
    key = _signature(dtype, n_labels, spatial_shape, n_channels)
    with _lock:
        job = _jobs.get(key)
        if job is not None and job[0] == os.getpid():
            return job[1].poll() is None  # running: NumPy; done (or failed): the kernels
        if kernels_ready(n_labels):
            return False
        try:
            _jobs[key] = (os.getpid(), _start((np.dtype(dtype).name, int(n_labels), spatial_shape, int(n_channels))))
        except (OSError, ValueError):  # cannot start a process here (no interpreter?): compile in this one
            return False
        return True


def _start(args):
    env = dict(os.environ, **{ENV: "compile"})  # the child compiles (and must not start children of its own)
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this crfcore, wherever it was imported from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "crfcore.warmup", json.dumps(args)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pending():
    """How many background compiles started by this process are still running."""
    with _lock:
        return sum(1 for pid, p in _jobs.values() if pid == os.getpid() and p.poll() is None)


def wait(timeout=None):
    """Wait for this process's background compiles; True when none is left running (each finished, well or
    not), False if ``timeout`` seconds passed first."""
    end = None if timeout is None else time.monotonic() + timeout
    with _lock:
        jobs = [p for pid, p in _jobs.values() if pid == os.getpid()]
    for p in jobs:
        try:
            p.wait(None if end is None else max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True


def _compile(profile):
    """Run one inference of this kind (one iteration on zeros), which compiles its kernels into Numba's cache."""
    import crfcore

    dtype, n_labels, spatial_shape, n_channels = profile
    logits = np.zeros(tuple(spatial_shape) + (n_labels,), dtype=dtype)
    image = np.zeros(tuple(spatial_shape) + (n_channels,), dtype=np.uint8)
    crfcore.meanfield(logits, image, n_iter=1, spatial_dims=len(spatial_shape))


if __name__ == "__main__":
    _compile(json.loads(sys.argv[1]))
