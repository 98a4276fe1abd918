"""A process's first calls without waiting for Numba: NumPy serves them while a background process compiles.

Numba compiles crfcore's kernels on their first call and keeps them in its on-disk cache (``cache=True``); a fresh
install would otherwise wait about 20 s on its first :func:`crfcore.meanfield`. When the kernels a call needs are
neither compiled in this process nor in the cache, that call and the next ones are computed by
:mod:`crfcore._engine.numpy_lattice` (the same lattice; results agree with the kernels' to float rounding) while a
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
    from ._kernels import lattice as K
    from ._kernels import meanfield as MK

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


def _all_dispatchers():
    """Every compiled kernel of crfcore (Numba dispatchers), by name."""
    from numba.core.registry import CPUDispatcher

    from ._kernels import lattice, meanfield

    return {f"{m.__name__.rsplit('.', 1)[-1]}.{name}": obj for m in (lattice, meanfield)
            for name, obj in vars(m).items() if isinstance(obj, CPUDispatcher)}


def cache_folder():
    """Where Numba keeps crfcore's compiled kernels: ``NUMBA_CACHE_DIR`` when set, else the package's
    ``__pycache__`` folders, or a per-user cache folder where those are not writable (Numba's own fallback)."""
    from ._kernels import lattice

    try:
        return os.path.dirname(lattice.build._cache._cache_path)  # Numba internals (0.5x-0.6x)
    except AttributeError:
        import numba

        return numba.config.CACHE_DIR or "(Numba's default cache locations)"


#: What ``crfcore warmup`` compiles: inference for float32 and float64, two labels (the pair kernels) and more.
PROFILES = tuple((dtype, n_labels) for dtype in ("float32", "float64") for n_labels in (2, 3))


def compile_all(*, training=False, progress=True, file=None):
    """Compile (or load from the cache) every kernel inference calls need, and with ``training`` those of the
    backward pass, for float32 and float64; returns a report (see :func:`format_report`).

    Each profile runs one small call in this process with the compiled kernels (never the NumPy fallback), so the
    kernels land in Numba's on-disk cache for every later process.
    """
    import crfcore

    file = sys.stderr if file is None else file
    steps, failed = [], []
    t_all = time.perf_counter()
    saved = os.environ.get(ENV)
    os.environ[ENV] = "compile"  # this process compiles: that is the command's whole job
    try:
        for k, (dtype, n_labels) in enumerate(PROFILES):
            what = f"{dtype}, {'2 labels' if n_labels == 2 else f'{n_labels}+ labels'}"
            if progress:
                print(f"[{k + 1}/{len(PROFILES)}] {what}: compiling...", file=file, flush=True)
            t0 = time.perf_counter()
            try:
                rng = np.random.default_rng(0)
                logits = rng.normal(size=(2, 24, 20, n_labels)).astype(dtype)
                image = rng.integers(0, 255, size=(2, 24, 20, 3), dtype=np.uint8)
                crfcore.meanfield(logits, image, n_iter=1)
                if training:
                    out, res = crfcore.meanfield_fwd(logits, image, n_iter=1)
                    crfcore.meanfield_bwd(res, np.ones_like(out), features=True)
            except Exception as exc:  # report and go on: the other profiles still compile
                failed.append((what, f"{type(exc).__name__}: {exc}"))
            seconds = time.perf_counter() - t0
            steps.append((what, seconds))
            if progress:
                print(f"[{k + 1}/{len(PROFILES)}] {what}: {seconds:.1f} s", file=file, flush=True)
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
    ready = {name: len(d.signatures) for name, d in _all_dispatchers().items() if d.signatures}
    return dict(kernels=len(ready), signatures=sum(ready.values()), steps=steps,
                seconds=time.perf_counter() - t_all, cache=cache_folder(), failed=failed, training=bool(training))


def format_report(report):
    """The summary ``crfcore warmup`` prints."""
    lines = [f"crfcore warmup: {report['kernels']} kernels ({report['signatures']} specialisations) ready in "
             f"{report['seconds']:.1f} s{' with the training kernels' if report['training'] else ''}",
             f"  cache folder: {report['cache']}"]
    lines += [f"  {what}: {seconds:.1f} s" for what, seconds in report["steps"]]
    lines += [f"  FAILED {what}: {msg}" for what, msg in report["failed"]]
    return "\n".join(lines)


if __name__ == "__main__":
    _compile(json.loads(sys.argv[1]))
