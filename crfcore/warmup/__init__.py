"""A process's first calls from an empty Numba cache: answered in about a second, then full speed.

Numba compiles crfcore's kernels on first use and keeps them in its on-disk cache (``cache=True``); after
``crfcore warmup`` (or any first call) every later process loads them in well under a second. From an empty cache
(a fresh install), the kernels of an inference call are compiled by worker processes, concurrently, one per
core (:mod:`crfcore.warmup.compile_workers`), about 8 s on 2 cores against 15 s in one process. Meanwhile:

- the **first** inference call (:func:`crfcore.meanfield`, :func:`crfcore.meanfield_fwd` without residuals) of
  this kind (dtype; two labels or more) is computed by NumPy (:mod:`crfcore.warmup.numpy_lattice`, the same
  lattice: results agree with the kernels' to float rounding) and returns in about a second;
- every **later** call waits for the compile to finish and then runs the compiled kernels. No call after the first
  is ever served at NumPy's speed, so the usual "one warm-up call, then time" measures full speed (the first
  timed call includes the rest of the compile).

Both are said once per kind at INFO level on the ``crfcore`` logger, with the seconds left and how to avoid it
(run ``crfcore warmup`` once after installing). Calls with more than :data:`MAX_POINTS` pixels skip NumPy and wait
for the compile. The workers run at a lower CPU priority and end with the process that started them; the kernels
they finished stay in the cache. Where workers cannot start, the kernels compile in the calling process.

``CRFCORE_FIRST_CALL=compile`` makes even the first call wait for the compiled kernels (every result then comes
from the kernels, bit for bit the same from the first call on). Training (``meanfield_fwd`` with residuals,
``meanfield_bwd``) always runs the kernels, compiling what ``crfcore warmup --training`` has not.
"""

import logging
import math
import os
import sys
import threading
import time


from . import compile_workers, numba_cache, signatures

ENV = "CRFCORE_FIRST_CALL"
MODES = ("numpy", "compile")
#: Calls with more pixels than this (over the batch) wait for the compile instead of NumPy: the NumPy lattice's
#: memory grows with them, and on such sizes the compile time is a small part of the work.
MAX_POINTS = 4_000_000

log = logging.getLogger("crfcore")

_lock = threading.Lock()
_jobs = {}  # profile key -> (pid of the process that started it, compile_workers.Workers)
_said = set()  # (message kind, profile key) already logged
_ready = set()  # profile keys whose kernels are all compiled in this process: nothing to check on later calls


def mode():
    """``"numpy"`` (the default) or ``"compile"``, from :data:`ENV`."""
    value = os.environ.get(ENV, "numpy").strip().lower() or "numpy"
    if value not in MODES:
        raise ValueError(f"the environment variable {ENV}={os.environ[ENV]!r} must be one of {MODES}")
    return value


def missing(key):
    """The kernels of profile ``key`` (see :func:`crfcore.warmup.signatures.profile_key`) neither compiled in
    this process nor in the cache, as ``(name, encoded signature)``; None for a profile the table lacks. A cache
    whose state cannot be read (another Numba's internals) counts as missing: the workers then load from it."""
    entries = signatures.entries(key)
    if entries is None:
        return None
    out = []
    for name, sig in entries:
        d, types = signatures.dispatcher(name), signatures.decode_all(sig)
        if not numba_cache.compiled(d, types) and numba_cache.cached(d, types) is not True:
            out.append((name, sig))
    return out


def ready(what="inference", dtype="float32", n_labels=2):
    """Whether every kernel of the profile is compiled in this process or in the cache (False for a profile the
    signature table lacks)."""
    return missing(signatures.profile_key(what, dtype, n_labels)) == []


def _in_table(n_labels, spatial_shape, n_channels):
    """Whether the table's signatures are this call's: its lattices' offsets fit 16 bits (see
    :class:`crfcore.Lattice`; always for 2-D images with up to 4 channels, 3-D volumes with up to 3)."""
    from ..lattice import chunk_size

    chunk = chunk_size(math.prod(spatial_shape))
    dims = len(spatial_shape)
    return all(chunk * (d + 1) <= 1 << 16 for d in (dims, dims + n_channels))


def _say(kind, key, message):
    if (kind, key) not in _said:
        _said.add((kind, key))
        log.info(message)


def _what(key):
    _, dtype, labels = key.split("/")
    return f"{dtype} inference with {'2 labels' if labels == '2' else '3 or more labels'}"


def serve_with_numpy(dtype, n_labels, spatial_shape, n_channels, n_batch):
    """Whether this inference call should be computed by NumPy; called by the inference entry points before
    they run the kernels. Starts the compile workers where the kernels are missing, and waits for them when
    this is not the first call of its kind (see the module's doc)."""
    first_call = mode() == "numpy"  # checked on every call: a bad value is always an error
    key = signatures.profile_key("inference", dtype, n_labels)
    if key in _ready:
        return False  # every call after the kernels are in: one set lookup
    if os.environ.get("CRFCORE_COMPILE_WORKER"):
        return False  # a compile worker itself (or the signature recorder): Numba compiles in this process
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if int(n_batch) * math.prod(spatial_shape) > MAX_POINTS:
        first_call = False
    if not _in_table(n_labels, spatial_shape, n_channels):
        return False  # rare lattices (more than 7 feature dimensions): compiled in this process on first use
    with _lock:
        job = _jobs.get(key)
        if job is not None and job[0] == os.getpid():
            workers = job[1]
            first_call = False
        else:
            todo = missing(key)
            if not todo:
                _ready.add(key)  # compiled, or cached and loaded by this call
                return False
            try:
                workers = compile_workers.Workers(todo)
            except (OSError, ValueError):  # no processes here (no interpreter?): compile in this one
                return False
            _jobs[key] = (os.getpid(), workers)
    if first_call:
        _say("numpy", key, f"crfcore: compiling the kernels of {_what(key)} in {len(workers.procs)} background "
                           f"process(es), about {workers.seconds_left():.0f} s more (once per install); this call is "
                           f"computed by NumPy, the next ones wait for the kernels. Run `crfcore warmup` once "
                           f"after installing to skip this.")
        return True
    if workers.running():
        _say("wait", key, f"crfcore: waiting about {workers.seconds_left():.0f} s for the kernels of {_what(key)} "
                          f"to finish compiling (once per install; `crfcore warmup` does it ahead).")
        workers.wait()
    return False  # compiled into the cache, or a worker failed and Numba compiles the rest here


def pending():
    """How many background compiles started by this process are still running."""
    with _lock:
        return sum(1 for pid, w in _jobs.values() if pid == os.getpid() and w.running())


def wait(timeout=None):
    """Wait for this process's background compiles; True when none is left running (each finished, well or
    not), False if ``timeout`` seconds passed first."""
    end = None if timeout is None else time.monotonic() + timeout
    with _lock:
        jobs = [w for pid, w in _jobs.values() if pid == os.getpid()]
    return all(w.wait(None if end is None else max(0.0, end - time.monotonic())) for w in jobs)


def cache_folder():
    """Where Numba keeps crfcore's compiled kernels: ``NUMBA_CACHE_DIR`` when set, else the package's
    ``__pycache__`` folders, or a per-user cache folder where those are not writable (Numba's own fallback)."""
    from .._kernels import lattice

    path = numba_cache.folder(lattice.embed_chunk)
    if path is None:
        import numba

        return numba.config.CACHE_DIR or "(Numba's default cache locations)"
    return path


def cache_note():
    """Why the kernels are cached where they are, in words (for ``crfcore warmup`` and ``crfcore info``): the folder
    Numba took is compared with ``NUMBA_CACHE_DIR``, which Numba passes over when it cannot write there."""
    import numba

    path, wanted = cache_folder(), numba.config.CACHE_DIR
    if not os.path.isabs(path):
        return "unknown to this Numba version"
    if wanted and numba_cache.in_package(path, wanted):
        return "set by NUMBA_CACHE_DIR"
    if numba_cache.in_package(path, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        where = "inside the installed package"
    else:
        where = "Numba's per-user cache folder: the installed package's folder is not writable"
    return f"{where}; NUMBA_CACHE_DIR={wanted} cannot be written, so Numba passed over it" if wanted else where


#: What ``crfcore warmup`` compiles: inference for float32 and float64, two labels (the pair kernels) and more;
#: ``--training`` adds the kernels of ``meanfield_fwd`` with residuals and ``meanfield_bwd``.
PROFILES = signatures.PROFILES


def compile_all(*, training=False, progress=True, file=None, n_workers=None):
    """Compile into the cache every kernel inference calls need (and with ``training`` those of the backward
    pass), float32 and float64, in worker processes (one per core); returns a report (see
    :func:`format_report`). Kernels already compiled or cached are skipped. Where workers cannot start, compiles
    in this process."""
    file = sys.stderr if file is None else file
    keys = [signatures.profile_key(*p) for p in PROFILES if training or p[0] == "inference"]
    t_all = time.perf_counter()
    todo = list(dict.fromkeys(item for key in keys for item in missing(key)))
    steps, failed, workers = [], [], None
    if todo:
        try:
            workers = compile_workers.Workers(todo, n_workers=n_workers, report=True)
        except (OSError, ValueError) as exc:
            if progress:
                print(f"crfcore warmup: no worker processes ({exc}); compiling in this process", file=file)
    if workers is not None:
        if progress:
            print(f"crfcore warmup: compiling {len(todo)} kernel specialisations in {len(workers.procs)} "
                  f"process(es), about {workers.expected_s:.0f} s", file=file, flush=True)
        shown = 0
        while True:
            finished = not workers.running()
            for name, seconds, error in workers.done[shown:]:
                shown += 1
                steps.append((name, seconds))
                if error:
                    failed.append((name, error))
                if progress:
                    bar = "#" * (20 * shown // len(todo))
                    print(f"[{bar:<20}] {shown}/{len(todo)} {name}: {seconds:.1f} s"
                          f"{' FAILED' if error else ''}", file=file, flush=True)
            if finished:
                break
            time.sleep(0.1)
        workers.wait()
    left = [item for key in keys for item in missing(key)]
    for name, sig in left:  # not compiled by a worker (it failed, or none could start): here
        t0 = time.perf_counter()
        try:
            signatures.dispatcher(name).compile(signatures.decode_all(sig))
        except Exception as exc:
            failed.append((name, f"{type(exc).__name__}: {exc}"))
        steps.append((name, time.perf_counter() - t0))
    names = {name for key in keys for name, _ in signatures.entries(key)}
    return dict(kernels=len(names), compiled=len(steps), steps=steps, seconds=time.perf_counter() - t_all,
                workers=0 if workers is None else len(workers.procs), cache=cache_folder(), cache_note=cache_note(),
                failed=failed, training=bool(training))


def format_report(report):
    """The summary ``crfcore warmup`` prints: what was compiled, how long it took, where it is cached."""
    what = "inference and training" if report["training"] else "inference"
    if report["compiled"]:
        lines = [f"crfcore warmup: {report['compiled']} kernel specialisations compiled in {report['seconds']:.1f} s "
                 f"({report['workers']} worker process(es)); all {report['kernels']} {what} kernels are ready"]
        by_time = sorted(report["steps"], key=lambda s: -s[1])
        lines += ["  slowest: " + ", ".join(f"{n} {s:.1f} s" for n, s in by_time[:5])]
    else:
        lines = [f"crfcore warmup: all {report['kernels']} {what} kernels were already compiled "
                 f"({report['seconds']:.1f} s to check)"]
    lines.append(f"  cache folder: {report['cache']} ({report['cache_note']})")
    lines += [f"  FAILED {name}: {msg}" for name, msg in report["failed"]]
    return "\n".join(lines)
