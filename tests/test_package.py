"""The installable package: one top-level name, the console script, one version, extras, no import side effects,
one crf_refine contract across the adapters, and 0.1's import names and call forms for one more release.

Scripts run in fresh interpreters from a folder outside the checkout (so that its ``adapters/`` folder cannot be
found by the old name unless a test asks for it).
"""

import importlib.metadata
import inspect
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import crfcore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def run_script(code, cwd, timeout=300, env=None):
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONPATH", None)  # crfcore from the venv's install (editable here, the wheel in CI's smoke test)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), ROOT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("crfcore-*.whl")
    return path


def test_wheel_installs_one_top_level_package_with_license_and_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"crfcore"}
    assert {"crfcore/adapters/tf.py", "crfcore/adapters/torch.py", "crfcore/adapters/jax.py",
            "crfcore/adapters/tf_lattice.py", "crfcore/_kernels/lattice.py", "crfcore/refine/files.py"} <= set(names)
    assert not any(n.startswith(("unet/", "benchmarks/", "tests/", "adapters/")) for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "crfcore = crfcore.cli:main" in entry
    assert f"Version: {crfcore.__version__}" in meta
    assert "Project-URL: Documentation" in meta
    for extra in ("tf", "torch", "jax", "refine", "dask", "docs", "dev", "all"):
        assert f"Provides-Extra: {extra}" in meta
    base = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(line.split()[1].split(">")[0].split(";")[0] for line in base) == ["numba", "numpy", "scipy", "tbb"]


def test_version_is_the_installed_metadata():
    assert crfcore.__version__ == importlib.metadata.version("crfcore") == "0.2.0"


def test_console_script_and_python_m_agree(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "crfcore")
    for cmd in ([script], [sys.executable, "-m", "crfcore"]):
        proc = subprocess.run(cmd + ["--version"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == f"crfcore {crfcore.__version__}", proc.stderr
        proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0 and all(c in proc.stdout for c in ("refine", "warmup", "info"))
        proc = subprocess.run(cmd + ["refine", str(tmp_path / "none"), "--scores", "x", "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_import_has_no_side_effects(tmp_path):
    code = """
        import os, sys, threading
        env, threads, files = dict(os.environ), threading.active_count(), set(os.listdir("."))
        import crfcore, crfcore.adapters, crfcore.pydensecrf, crfcore.refine
        assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
        assert threading.active_count() == threads, threading.enumerate()
        assert set(os.listdir(".")) == files
        heavy = {"tensorflow", "torch", "jax", "keras", "scipy.optimize", "dask", "PIL", "zarr", "numba.cuda",
                 "numba_cuda"} & set(sys.modules)
        assert not heavy, heavy
        print("ok")
    """
    proc = run_script(code, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


BLOCK = """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):  # as if the frameworks were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"tensorflow", "keras", "torch", "jax"}:
                raise ModuleNotFoundError(f"No module named {name!r}")
    sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("module, extra", [("tf", "tf"), ("tf_lattice", "tf"), ("torch", "torch"), ("jax", "jax")])
def test_framework_modules_name_their_extra(tmp_path, module, extra):
    code = BLOCK + f"""
    import crfcore.adapters  # needs no framework
    try:
        import crfcore.adapters.{module}
    except ImportError as exc:
        print(exc)
    """
    proc = run_script(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pip install 'crfcore[{extra}]'" in proc.stdout and f"crfcore.adapters.{module} needs" in proc.stdout


def test_old_adapter_names_are_the_same_modules(tmp_path):
    pytest.importorskip("torch")
    code = """
        import sys, warnings
        sys.path.insert(0, sys.argv[1])  # the checkout, where adapters/ is a folder
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import adapters.torch as old
        import crfcore.adapters.torch as new
        import torch
        assert old is new and old.__name__ == "crfcore.adapters.torch"
        assert any(issubclass(w.category, DeprecationWarning) and "crfcore.adapters.torch" in str(w.message)
                   for w in caught), [str(w.message) for w in caught]
        lg, img = torch.randn(1, 2, 6, 7), torch.rand(1, 3, 6, 7) * 255
        assert torch.allclose(old.crf_refine(lg, img, n_iter=2), torch.ops.crfcore.meanfield(
            lg, img, 3.0 * torch.eye(2), 10.0 * torch.eye(2), 1 - torch.eye(2),
            torch.tensor([80.0, 13.0, 3.0], dtype=torch.float64), 2, "symmetric", False)[0])
        print("ok")
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), ROOT], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_keras_file_saved_by_0_1_loads(tmp_path):
    """tests/data/crfrnn_layer_v0.1.keras was saved by 0.1 (``adapters.tf``, trained widths, perturbed weights)."""
    pytest.importorskip("tensorflow")
    code = f"""
        import numpy as np, keras
        import crfcore.adapters.tf
        model = keras.models.load_model({os.path.join(DATA, "crfrnn_layer_v0.1.keras")!r})
        io = np.load({os.path.join(DATA, "crfrnn_layer_v0.1_io.npz")!r})
        out = np.asarray(model([io["logits"], io["image"]]))
        layer = model.get_layer("crfrnn")
        assert type(layer) is crfcore.adapters.tf.CrfRnnLayer, type(layer)
        assert layer.learned_widths == ("theta_alpha", "theta_beta")
        print(float(np.abs(out - io["output"]).max()))
    """
    proc = run_script(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5


CONTRACT = ["logits", "image", "n_iter", "theta_alpha", "theta_beta", "theta_gamma", "w_bilateral", "w_spatial",
            "compat", "normalization", "spatial_dims"]


def _adapter(name):
    try:
        return __import__(f"crfcore.adapters.{name}", fromlist=["crf_refine"])
    except ImportError as exc:
        pytest.skip(f"{name} is not installed: {exc}")


@pytest.mark.parametrize("name", ["tf", "torch", "jax"])
def test_crf_refine_has_meanfields_keywords(name):
    core = inspect.signature(crfcore.meanfield).parameters
    assert list(core) == CONTRACT + ["device"]  # an adapter's device is its tensors'
    params = inspect.signature(_adapter(name).crf_refine).parameters
    assert list(params)[:len(CONTRACT)] == CONTRACT
    for key in CONTRACT:
        assert params[key].kind == core[key].kind and params[key].default == core[key].default, key


def test_bwd_features_default_is_the_same():
    a = inspect.signature(crfcore.meanfield_bwd).parameters["features"].default
    b = inspect.signature(crfcore.crf_bwd).parameters["features"].default
    assert a is b is True


def test_device_is_the_same_keyword_everywhere():
    """Forwards take ``device="cpu"``; backwards ``device=None`` (where the forward ran)."""
    for fn in (crfcore.meanfield, crfcore.meanfield_fwd, crfcore.crf, crfcore.crf_fwd):
        p = inspect.signature(fn).parameters["device"]
        assert p.kind == p.KEYWORD_ONLY and p.default == "cpu", fn.__name__
    for fn in (crfcore.meanfield_bwd, crfcore.crf_bwd):
        p = inspect.signature(fn).parameters["device"]
        assert p.kind == p.KEYWORD_ONLY and p.default is None, fn.__name__


def test_all_names_the_public_api():
    assert set(crfcore.__all__) >= {"meanfield", "meanfield_fwd", "meanfield_bwd", "MeanfieldGrads", "crf", "crf_fwd",
                                    "crf_bwd", "CrfGrads", "CrfResiduals", "TermGrads", "PairwiseTerm", "fit",
                                    "refine_files", "Lattice", "positions", "potts", "__version__"}
    for name in crfcore.__all__:
        assert hasattr(crfcore, name), name
    assert crfcore.positions is crfcore.features.positions


def test_tf_old_positional_form_warns_and_matches(rng):
    tf = pytest.importorskip("tensorflow")
    from crfcore.adapters.tf import crf_refine

    logits = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    image = rng.uniform(0, 255, size=(2, 9, 11, 3)).astype(np.float32)
    ws, wb, mu = (np.float32(3) * np.eye(3, dtype=np.float32), np.float32(10) * np.eye(3, dtype=np.float32),
                  1 - np.eye(3, dtype=np.float32))
    with pytest.warns(DeprecationWarning, match="w_spatial=.*normalization='after'"):
        old = crf_refine(tf.constant(logits), tf.constant(image), ws, wb, mu, n_iter=3, theta_alpha=20.0,
                         theta_beta=30.0, theta_gamma=2.0)
    new = crf_refine(tf.constant(logits), tf.constant(image), n_iter=3, theta_alpha=20.0, theta_beta=30.0,
                     theta_gamma=2.0, normalization="after")
    core = crfcore.meanfield_fwd(logits, image, n_iter=3, theta_alpha=20.0, theta_beta=30.0, theta_gamma=2.0,
                                 normalization="after", output="logits")[0]
    np.testing.assert_array_equal(old.numpy(), new.numpy())
    np.testing.assert_allclose(new.numpy(), core, rtol=1e-6, atol=1e-6)


def test_torch_volume_without_spatial_dims_warns(rng):
    torch = pytest.importorskip("torch")
    from crfcore.adapters.torch import crf_refine

    lg = torch.tensor(rng.normal(size=(1, 2, 4, 5, 6)), dtype=torch.float32)
    img = torch.tensor(rng.uniform(0, 255, size=(1, 1, 4, 5, 6)), dtype=torch.float32)
    with pytest.warns(DeprecationWarning, match="spatial_dims=3"):
        old = crf_refine(lg, img, n_iter=2)
    np.testing.assert_array_equal(old.numpy(), crf_refine(lg, img, n_iter=2, spatial_dims=3).numpy())
