"""The first calls from an empty cache (crfcore.warmup): NumPy answers the first, workers compile, the rest wait."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crfcore
from crfcore import warmup
from crfcore.features import bilateral_features, spatial_features
from crfcore.warmup.numpy_lattice import NumpyLattice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@given(st.integers(1, 6), st.integers(1, 300), st.floats(0.1, 20.0), st.integers(0, 2**32 - 1))
def test_numpy_lattice_filters_as_the_compiled_one(d, n, spread, seed):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d)) * spread
    v = rng.normal(size=(n, 3))
    lat = crfcore.Lattice(f, dtype=np.float64)
    nl = NumpyLattice(f)
    assert nl.num_vertices == lat.num_vertices
    np.testing.assert_allclose(nl.filter(v), lat.filter(v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("features", [
    lambda rng: bilateral_features(rng.integers(0, 256, (40 * 30, 3)), (40, 30), 10.0, 40.0),  # pixel grid
    lambda rng: bilateral_features(np.zeros((24 * 24, 1)), (24, 24), 3.0, 13.0),  # flat: many exact ties
    lambda rng: spatial_features((9, 11, 7), 2.0),
])
def test_numpy_lattice_builds_the_same_vertices_on_grids(features, rng):
    f = features(rng)
    v = rng.normal(size=(f.shape[0], 2))
    lat = crfcore.Lattice(f, dtype=np.float64)
    nl = NumpyLattice(f)
    assert nl.num_vertices == lat.num_vertices
    np.testing.assert_allclose(nl.filter(v), lat.filter(v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [
    dict(),
    dict(n_labels=3, normalization="after", theta_alpha=10.0, theta_beta=40.0),
    dict(normalization="before", output="logits"),
    dict(normalization="none", n_iter=2),
    dict(n_iter=0),
    dict(n_iter=0, output="logits"),
    dict(dtype=np.float64, n_labels=4, w_spatial="matrix", compat="matrix"),
    dict(channels=1, theta_alpha=(5.0, 9.0), theta_beta=20.0),
    dict(channels=2, theta_beta=(10.0, 30.0), batch=2),
    dict(spatial=(6, 7, 5), spatial_dims=3, n_labels=2, theta_alpha=3.0, theta_gamma=(1.0, 2.0, 3.0)),
])
def test_numpy_tier_agrees_with_the_kernels(case, rng, monkeypatch):
    case = dict(case)
    dtype = case.pop("dtype", np.float32)
    n_lab = case.pop("n_labels", 2)
    channels = case.pop("channels", 3)
    spatial = case.pop("spatial", (23, 31))
    batch = case.pop("batch", None)
    lead = () if batch is None else (batch,)
    logits = (3 * rng.normal(size=lead + spatial + (n_lab,))).astype(dtype)
    image = rng.integers(0, 256, size=lead + spatial + (channels,)).astype(np.uint8)
    for key in ("w_spatial", "compat"):
        if case.get(key) == "matrix":
            m = rng.uniform(0.5, 2.0, size=(n_lab, n_lab))
            case[key] = m if key == "w_spatial" else m * (1 - np.eye(n_lab))
    output = case.pop("output", "probs")
    want, _ = crfcore.meanfield_fwd(logits, image, output=output, keep_residuals=False, **case)
    # the same call as a cold process makes it: meanfield_fwd's own dispatch to the NumPy tier
    monkeypatch.setattr(warmup, "serve_with_numpy", lambda *args: True)
    got, _ = crfcore.meanfield_fwd(logits, image, output=output, keep_residuals=False, **case)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_a_bad_mode_is_an_error_naming_the_variable(monkeypatch, rng):
    monkeypatch.setenv(warmup.ENV, "later")
    with pytest.raises(ValueError, match="CRFCORE_FIRST_CALL='later'"):
        crfcore.meanfield(rng.normal(size=(8, 8, 2)).astype(np.float32), np.zeros((8, 8, 3), np.uint8))


class _SleepingWorkers:
    """Stands in for the compile workers in the policy test only: processes that run ``seconds`` and end."""

    def __init__(self, seconds, code="import time, sys; time.sleep(float(sys.argv[1]))"):
        self.procs = [subprocess.Popen([sys.executable, "-c", code, str(seconds)])]

    def running(self):
        return self.procs[0].poll() is None

    def seconds_left(self):
        return 1.0

    def wait(self, timeout=None):
        try:
            self.procs[0].wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


def test_policy_numpy_for_the_first_call_then_every_call_waits(monkeypatch, caplog):
    """With kernels reported missing: the first small call of a kind is NumPy's and starts the compile; every
    later call of that kind waits for it (never NumPy again); the compile mode and a huge call wait at once; each
    message is logged once at INFO."""
    import logging
    import time

    caplog.set_level(logging.INFO, logger="crfcore")
    monkeypatch.setenv(warmup.ENV, "numpy")
    monkeypatch.delenv("CRFCORE_COMPILE_WORKER", raising=False)
    monkeypatch.setattr(warmup, "_jobs", {})
    monkeypatch.setattr(warmup, "_said", set())
    monkeypatch.setattr(warmup, "_ready", set())
    missing = {"inference/float32/2", "inference/float64/2", "inference/float32/3"}
    monkeypatch.setattr(warmup, "missing", lambda key: [("lattice.embed", ())] if key in missing else [])
    started = []

    def workers(todo, seconds=1.5):
        started.append(todo)
        return _SleepingWorkers(seconds)

    monkeypatch.setattr(warmup.compile_workers, "Workers", workers)
    assert warmup.serve_with_numpy(np.float32, 2, (64, 64), 3, 1)  # the first: NumPy, workers started
    t = time.monotonic()
    assert not warmup.serve_with_numpy(np.float32, 2, (80, 50), 3, 1)  # the second: waits, then the kernels
    assert time.monotonic() - t > 0.5 and warmup.pending() == 0 and len(started) == 1
    assert not warmup.serve_with_numpy(np.float32, 2, (64, 64), 3, 1)  # done: the kernels at once
    assert warmup.serve_with_numpy(np.float64, 2, (64, 64), 3, 1)  # another kind: workers of its own
    assert len(started) == 2 and warmup.wait(timeout=30)
    assert not warmup.serve_with_numpy(np.float64, 3, (64, 64), 3, 1)  # nothing missing: the kernels
    t = time.monotonic()
    assert not warmup.serve_with_numpy(np.float32, 3, (2048, 2048), 3, 1)  # above MAX_POINTS: waits
    assert time.monotonic() - t > 0.5 and len(started) == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "crfcore"]
    assert sum("this call is computed by NumPy" in m for m in messages) == 2, messages
    assert sum(m.startswith("crfcore: waiting about") for m in messages) == 2, messages
    assert all("crfcore warmup" in m for m in messages) and all(r.levelno == logging.INFO for r in caplog.records)
    monkeypatch.setattr(warmup, "_jobs", {})
    monkeypatch.setenv(warmup.ENV, "compile")
    assert not warmup.serve_with_numpy(np.float32, 2, (16, 16), 3, 1) and warmup.pending() == 0  # waited
    monkeypatch.setenv(warmup.ENV, "numpy")
    monkeypatch.setattr(warmup, "_jobs", {})
    monkeypatch.setattr(warmup.compile_workers, "Workers", lambda todo: _SleepingWorkers(0, "raise SystemExit(3)"))
    assert warmup.serve_with_numpy(np.float32, 2, (16, 16), 1, 1)
    assert not warmup.serve_with_numpy(np.float32, 2, (16, 16), 1, 1)  # the workers failed: Numba compiles here
    # a lattice whose offsets need 32 bits (> 7 feature dimensions) is not in the table: compiled in the process
    assert not warmup.serve_with_numpy(np.float32, 2, (64, 64, 64), 6, 1)


COLD = """
import json, logging, sys, time, numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import crfcore
from crfcore import warmup
from crfcore.warmup import numba_cache
from numba.core import event
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
logits = (3 * rng.normal(size=(48, 40, 2))).astype(np.float32)
before = warmup.ready("inference", "float32", 2)
t = time.perf_counter()
first = crfcore.meanfield(logits, image, theta_alpha=10.0, theta_beta=40.0)
first_s = time.perf_counter() - t
workers = [p.pid for _, w in warmup._jobs.values() for p in w.procs]
with event.install_recorder("numba:compile") as rec:
    second = crfcore.meanfield(logits, image, theta_alpha=10.0, theta_beta=40.0)
np.savez(sys.argv[1], first=first, second=second)
print(json.dumps(dict(before=before, first_s=first_s, workers=len(workers), left=warmup.pending(),
                      after=warmup.ready("inference", "float32", 2), compiles_in_process=len(rec.buffer))))
"""


def test_a_cold_process_answers_from_numpy_then_waits_for_the_workers(tmp_path):
    """A fresh process with an empty Numba cache: the first call comes back from NumPy while workers compile;
    the second waits for them and runs the kernels they put in the cache, compiling nothing itself, with the very
    result of this (warm) process's kernels; the first call agrees to float32 rounding; both are logged."""
    out = tmp_path / "q.npz"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), CRFCORE_FIRST_CALL="numpy")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CRFCORE_COMPILE_WORKER", None)
    proc = subprocess.run([sys.executable, "-c", COLD, str(out)], env=env, capture_output=True, text=True,
                          timeout=590)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["before"] is False and state["workers"] >= 1 and state["left"] == 0 and state["after"], state
    assert state["compiles_in_process"] == 0, state  # every kernel came from the workers' cache
    assert "this call is computed by NumPy" in proc.stderr and "crfcore: waiting about" in proc.stderr
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    logits = (3 * rng.normal(size=(48, 40, 2))).astype(np.float32)
    want = crfcore.meanfield(logits, image, theta_alpha=10.0, theta_beta=40.0)
    got = np.load(out)
    np.testing.assert_array_equal(got["second"], want)
    np.testing.assert_allclose(got["first"], want, rtol=2e-5, atol=2e-5)
    # crfcore info says what this float32 use compiled, and only that
    info = subprocess.run([sys.executable, "-m", "crfcore", "info"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert "inference kernels cached: float32 2 labels yes, 3+ labels no; float64 2 labels no, 3+ labels no " \
           "(the rest: run crfcore warmup)" in info.stdout, info.stdout


PARENT = """
import json, os, sys, time
from crfcore import warmup
from crfcore.warmup import compile_workers
w = compile_workers.Workers(warmup.missing("training/float64/3"), n_workers=2)
mine = os.getpriority(os.PRIO_PROCESS, 0)
deadline = time.monotonic() + 30  # a worker lowers its priority once Python has started in it: slow on a busy machine
while True:
    nice = [os.getpriority(os.PRIO_PROCESS, p.pid) for p in w.procs]
    if all(n >= min(19, mine + 10) for n in nice) or time.monotonic() > deadline:
        break
    time.sleep(0.1)
print(json.dumps(dict(pids=[p.pid for p in w.procs], nice=nice, mine=mine)), flush=True)
os._exit(0)  # no cleanup: the workers must notice by themselves
"""


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="process priorities are POSIX")
def test_workers_run_below_their_parent_and_end_with_it(tmp_path):
    import time

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", PARENT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(state["pids"]) == 2 and all(n >= min(19, state["mine"] + 10) for n in state["nice"]), state
    deadline = time.monotonic() + 10
    alive = state["pids"]
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.1)
    assert not alive, f"compile workers {alive} outlived their parent"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init) counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_import_leaves_heavy_optional_modules_unloaded():
    """``import crfcore`` is part of every first call: scipy's optimiser (~0.35 s to import, needed by ``fit``
    only) and the frameworks stay out of it."""
    code = ("import sys, crfcore; print(' '.join(m for m in ('scipy.optimize', 'tensorflow', 'torch', 'jax', 'dask')"
            " if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout


WARM = """
import json, sys, numpy as np
from numba.core import event
import crfcore
with event.install_recorder("numba:compile") as rec:
    for dtype in (np.float32, np.float64):
        for n_labels in (2, 3, 5):
            rng = np.random.default_rng(0)
            crfcore.meanfield(rng.normal(size=(30, 20, n_labels)).astype(dtype), rng.integers(0, 255, (30, 20, 3)))
    out, res = crfcore.meanfield_fwd(rng.normal(size=(2, 30, 20, 2)).astype(np.float32), np.zeros((2, 30, 20, 3)))
    crfcore.meanfield_bwd(res, np.ones_like(out))
print(json.dumps(len(rec.buffer)))
"""


def test_warmup_command_compiles_everything_a_call_needs(tmp_path):
    """``crfcore warmup --training`` from an empty cache, then a fresh process: no inference or training call of
    any dtype or label count compiles anything; the command showed progress and a summary with the cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CRFCORE_COMPILE_WORKER", None)
    cmd = subprocess.run([sys.executable, "-m", "crfcore", "warmup", "--training"], env=env, capture_output=True,
                         text=True, timeout=590)
    assert cmd.returncode == 0, cmd.stderr[-3000:]
    assert "process(es), about" in cmd.stderr and "] 1/" in cmd.stderr, cmd.stderr
    summary = cmd.stdout
    assert summary.startswith("crfcore warmup: ") and "inference and training kernels are ready" in summary
    assert f"cache folder: {tmp_path / 'cache'}" in summary and "(set by NUMBA_CACHE_DIR)" in summary
    assert "FAILED" not in summary
    warm = subprocess.run([sys.executable, "-c", WARM], env=env, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert json.loads(warm.stdout.strip().splitlines()[-1]) == 0, "a call after warmup compiled kernels"
    again = subprocess.run([sys.executable, "-m", "crfcore", "warmup"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "were already compiled" in again.stdout, again.stdout
    info = subprocess.run([sys.executable, "-m", "crfcore", "info"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert info.returncode == 0 and "2 labels yes, 3+ labels yes" in info.stdout, info.stdout
    assert f"crfcore {crfcore.__version__}" in info.stdout


def test_signature_table_is_current(tmp_path):
    """The table of kernel argument types (crfcore/warmup/signature_table.py) is what the kernels are called
    with today: regenerate it with ``python tools/record_signatures.py`` when this fails."""
    from crfcore.warmup import signature_table

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "record_signatures.py"), "--json"], env=env,
                          capture_output=True, text=True, timeout=590)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = {k: {n: [tuple(s) for s in sigs] for n, sigs in v.items()}
                for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    assert recorded == signature_table.TABLE, \
        "the kernels' argument types changed: run `python tools/record_signatures.py` and commit the table"


def test_numba_internals_the_cache_check_reads_are_there(tmp_path):
    """crfcore.warmup.numba_cache reads Numba's private cache attributes; this fails, naming them, when a Numba
    release changes them (crfcore then still works: the workers load from the cache, about a second lost)."""
    code = """
import json, numpy as np
from numba.core import types
from crfcore.warmup import numba_cache
from crfcore._kernels import lattice
d = lattice.feature_range
sig = (types.Array(types.float64, 2, "C"),)
other = (types.Array(types.float32, 2, "C"),)
before = numba_cache.cached(d, sig)
d(np.zeros((3, 2)))
print(json.dumps(dict(attrs=[hasattr(d, "_cache"), hasattr(d._cache, "_index_key"), hasattr(d._cache, "_cache_file"),
                             hasattr(d._cache._cache_file, "_load_index"), hasattr(d, "targetctx")],
                      before=before, after=numba_cache.cached(d, sig), other=numba_cache.cached(d, other),
                      compiled=numba_cache.compiled(d, sig), folder=numba_cache.folder(d))))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    names = ["Dispatcher._cache", "_cache._index_key", "_cache._cache_file", "_cache_file._load_index",
             "Dispatcher.targetctx"]
    gone = [n for n, ok in zip(names, state["attrs"]) if not ok]
    assert not gone, f"this Numba changed the internals crfcore.warmup.numba_cache reads: {gone}"
    assert (state["before"], state["after"], state["other"], state["compiled"]) == (False, True, False, True), state
    assert state["folder"].startswith(str(tmp_path / "cache"))


def test_an_unusable_numba_cache_dir_is_said_so(tmp_path):
    """``NUMBA_CACHE_DIR`` that cannot be written (here under a file, which even root cannot write into): Numba
    passes over it to the package's folder, and crfcore says that folder, and why, not "set by NUMBA_CACHE_DIR"."""
    (tmp_path / "a-file").write_text("")
    wanted = tmp_path / "a-file" / "cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(wanted))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    info = subprocess.run([sys.executable, "-m", "crfcore", "info"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert info.returncode == 0, info.stderr[-3000:]
    line = next(x for x in info.stdout.splitlines() if x.startswith("kernel cache: "))
    assert line.startswith(f"kernel cache: {os.path.join(ROOT, 'crfcore')}"), line
    assert line.endswith(f"(inside the installed package; NUMBA_CACHE_DIR={wanted} cannot be written, so Numba "
                         f"passed over it)"), line


def test_warmup_from_an_unwritable_install_uses_the_user_cache(tmp_path):
    """An installed crfcore whose package folder cannot take a cache (here its ``__pycache__`` is a file, which
    even root cannot write into): Numba falls back to the per-user cache folder, ``crfcore warmup`` fills it and
    says so, and a later process finds the kernels there."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "crfcore"), site / "crfcore",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "adapters"))
    for folder, _, _ in os.walk(site / "crfcore"):
        open(os.path.join(folder, "__pycache__"), "w").close()  # not a folder: nothing can be cached there
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH", "CRFCORE_COMPILE_WORKER")}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "user-cache"), HOME=str(tmp_path / "home"))
    cmd = subprocess.run([sys.executable, "-m", "crfcore", "warmup"], env=env, capture_output=True, text=True,
                         timeout=590, cwd=tmp_path)
    assert cmd.returncode == 0, cmd.stderr[-3000:]
    assert "the installed package's folder is not writable" in cmd.stdout, cmd.stdout
    assert f"cache folder: {tmp_path / 'user-cache'}" in cmd.stdout, cmd.stdout
    info = subprocess.run([sys.executable, "-m", "crfcore", "info"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert info.returncode == 0 and "2 labels yes, 3+ labels yes" in info.stdout, info.stdout


def test_unknown_cache_state_counts_as_missing(monkeypatch):
    """Where the cache cannot be read (another Numba's internals: ``cached`` says None), every kernel not compiled
    in this process counts as missing, so the workers load or compile it: never a kernel assumed cached."""
    from crfcore.warmup import numba_cache
    from crfcore.warmup import signatures

    key = "inference/float64/3"
    names = [name for name, _ in signatures.entries(key)]
    monkeypatch.setattr(numba_cache, "cached", lambda dispatcher, sig: None)
    monkeypatch.setattr(numba_cache, "compiled", lambda dispatcher, sig: False)
    assert [name for name, _ in warmup.missing(key)] == names
    monkeypatch.setattr(numba_cache, "compiled", lambda dispatcher, sig: True)
    assert warmup.missing(key) == []
    assert warmup.missing("inference/float16/3") is None  # not in the table
