"""The first-call tier: NumPy serves inference while a background process compiles the kernels (crfcore.warmup)."""

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
from crfcore._engine.numpy_lattice import NumpyLattice

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


def test_policy_numpy_while_compiling_kernels_after_and_compile_when_it_failed(monkeypatch):
    """With the kernels reported absent: a small call starts one background job and is served by NumPy while it
    runs; a huge call and the compile mode never are; a job that failed hands the calls to the kernels."""
    monkeypatch.setenv(warmup.ENV, "numpy")
    monkeypatch.setattr(warmup, "kernels_ready", lambda n_labels: False)
    monkeypatch.setattr(warmup, "_jobs", {})
    started = []

    def start(profile, code="import time; time.sleep(60)"):
        started.append(profile)
        return subprocess.Popen([sys.executable, "-c", code])

    monkeypatch.setattr(warmup, "_start", start)
    try:
        assert warmup.serve_with_numpy(np.float32, 2, (64, 64), 3, 1)
        assert warmup.serve_with_numpy(np.float32, 2, (64, 64), 3, 4)  # the same job, still running
        assert warmup.serve_with_numpy(np.float32, 2, (80, 50), 3, 1)  # same kernels: the same job
        assert started == [("float32", 2, (64, 64), 3)] and warmup.pending() == 1
        assert warmup.serve_with_numpy(np.float64, 2, (64, 64), 3, 1)  # other kernels: a job of its own
        assert started[1] == ("float64", 2, (64, 64), 3) and warmup.pending() == 2
        assert not warmup.serve_with_numpy(np.float32, 2, (2048, 2048), 3, 1)  # above MAX_POINTS
        monkeypatch.setenv(warmup.ENV, "compile")
        assert not warmup.serve_with_numpy(np.float32, 3, (64, 64), 3, 1)
        assert not warmup.wait(timeout=0.2)
    finally:
        for _, p in warmup._jobs.values():
            p.kill()
            p.wait()
    monkeypatch.setenv(warmup.ENV, "numpy")
    monkeypatch.setattr(warmup, "_jobs", {})
    monkeypatch.setattr(warmup, "_start", lambda profile: start(profile, "raise SystemExit(3)"))
    assert warmup.serve_with_numpy(np.float64, 3, (16, 16), 1, 1)
    assert warmup.wait(timeout=60) and warmup.pending() == 0
    assert not warmup.serve_with_numpy(np.float64, 3, (16, 16), 1, 1)  # the job failed: compile here


COLD = """
import json, sys, numpy as np, crfcore
from crfcore import warmup
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
logits = (3 * rng.normal(size=(48, 40, 2))).astype(np.float32)
before = warmup.kernels_ready(2)
first = crfcore.meanfield(logits, image, theta_alpha=10.0, theta_beta=40.0)
pending = warmup.pending()
done = warmup.wait(timeout=500)
after = warmup.kernels_ready(2)
compiled = crfcore.meanfield(logits, image, theta_alpha=10.0, theta_beta=40.0)
np.savez(sys.argv[1], first=first, compiled=compiled)
print(json.dumps(dict(before=before, pending=pending, done=done, after=after, left=warmup.pending())))
"""


def test_a_cold_process_is_served_by_numpy_then_by_the_cached_kernels(tmp_path):
    """A fresh process with an empty Numba cache: the first call comes back from NumPy with a background compile
    running; once it is done the kernels are in the cache and the next call runs them, giving the very result of
    this (warm) process's kernels; the first call agrees with it to float32 rounding."""
    out = tmp_path / "q.npz"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), CRFCORE_FIRST_CALL="numpy")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", COLD, str(out)], env=env, capture_output=True, text=True,
                          timeout=590)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == dict(before=False, pending=1, done=True, after=True, left=0), state
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path / "cache") for f in files)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    logits = (3 * rng.normal(size=(48, 40, 2))).astype(np.float32)
    want = crfcore.meanfield(logits, image, theta_alpha=10.0, theta_beta=40.0)
    got = np.load(out)
    np.testing.assert_array_equal(got["compiled"], want)
    np.testing.assert_allclose(got["first"], want, rtol=2e-5, atol=2e-5)


def test_import_leaves_heavy_optional_modules_unloaded():
    """``import crfcore`` is part of every first call: scipy's optimiser (~0.35 s to import, needed by ``fit``
    only) and the frameworks stay out of it."""
    code = ("import sys, crfcore; print(' '.join(m for m in ('scipy.optimize', 'tensorflow', 'torch', 'jax', 'dask')"
            " if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout


def test_warmup_command_compiles_and_reports(capsys):
    from crfcore.cli import main

    assert main(["warmup", "--training"]) == 0
    captured = capsys.readouterr()
    assert "[4/4] float64, 3+ labels:" in captured.err
    report = captured.out
    assert report.startswith("crfcore warmup: ") and "with the training kernels" in report
    assert f"cache folder: {warmup.cache_folder()}" in report and "FAILED" not in report
    assert os.path.isdir(warmup.cache_folder())
    assert warmup.kernels_ready(2) and warmup.kernels_ready(3)
    assert main(["info"]) == 0
    info = capsys.readouterr().out
    assert f"crfcore {crfcore.__version__}" in info and "2 labels yes, 3+ labels yes" in info
