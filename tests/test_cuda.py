"""crfcore's CUDA backend (device="cuda") against the CPU path: every result and gradient, on small inputs.

Without a GPU these run in Numba's CUDA simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 before Numba is
imported); on a machine with a GPU the same tests run on it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason="device='cuda' needs numba-cuda: pip install 'crfcore[cuda]'")

import crfcore  # noqa: E402
from crfcore import Lattice  # noqa: E402
from crfcore._cuda import device as dev  # noqa: E402
from crfcore._cuda.lattice import CudaLattice, exclusive_scan, stable_order  # noqa: E402

HERE = os.path.dirname(__file__)
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _host(x):
    return dev.to_host(x) if dev.is_device_array(x) else np.asarray(x)


def test_scan_and_stable_sort(rng):
    for n, m in [(7, 3), (300, 100), (1000, 3000)]:
        keys = rng.integers(0, m, n).astype(np.int32)
        order = _host(stable_order(dev.to_device(keys), int(m - 1).bit_length()))
        np.testing.assert_array_equal(order, np.argsort(keys, kind="stable"))
        values = rng.integers(0, 5, n).astype(np.int32)
        out = dev.empty(n, np.int64)
        assert exclusive_scan(dev.to_device(values), out) == values.sum()
        np.testing.assert_array_equal(_host(out), np.cumsum(values) - values)


def _grid_features(h, w, widths, image=None):
    """Pixel-grid features (points on simplex boundaries, as real images have)."""
    pos = crfcore.positions((h, w), widths)
    return pos if image is None else np.concatenate([pos, image.reshape(h * w, -1) / 13.0], axis=1)


@pytest.mark.parametrize("case", ["random-d2", "random-d5", "grid-bilateral", "grid-spatial", "wide-d7",
                                  "contended"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lattice_is_the_cpu_lattice(case, dtype, rng):
    """The same vertices (numbered alike), blur neighbours and barycentric weights as crfcore.Lattice; filtering,
    its transpose and the features gradient equal to rounding."""
    if case == "contended":
        # a GPU-only case: 256K pixels in flat blocks, so thousands of threads at once insert the same vertices
        # (the hash table's exchange between threads, which the simulator's few threads hardly exercise)
        if SIM:
            pytest.skip("a real GPU's case: too large for the simulator")
        blocks = rng.integers(0, 255, (16, 16, 3)).repeat(32, axis=0).repeat(32, axis=1)
        f = _grid_features(512, 512, 40.0, blocks)
    elif case == "random-d2":
        f = rng.normal(size=(50, 2)) * 3
    elif case == "random-d5":
        f = rng.normal(size=(60, 5)) * 2
        f[:10] = np.round(f[:10])  # ties
    elif case == "grid-bilateral":
        f = _grid_features(6, 7, 2.0, rng.integers(0, 255, (6, 7, 3)))
    elif case == "grid-spatial":
        f = _grid_features(8, 9, 3.0)
    else:  # a feature range that needs two words per key
        f = rng.normal(size=(40, 7)) * 4000
    cpu = Lattice(f, dtype=dtype)
    lat = CudaLattice(dev.to_device(f), dtype)
    assert lat.num_vertices == cpu.num_vertices
    a = cpu.arrays
    np.testing.assert_array_equal(_host(lat.vertex), a.remap[a.starts[np.arange(f.shape[0] * (f.shape[1] + 1))
                                                                      // ((f.shape[1] + 1) * cpu.chunk)]
                                                             + a.offsets.astype(np.int64)])
    np.testing.assert_array_equal(_host(lat.neighbours), a.neighbours)
    np.testing.assert_array_equal(_host(lat.weights), a.weights)
    x = rng.normal(size=(f.shape[0], 3)).astype(dtype)
    g = rng.normal(size=x.shape).astype(dtype)
    ones = lat.ones(dtype)
    out = dev.empty(x.shape, dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for transpose in (False, True):
        lat.apply(dev.to_device(x), out, pre=ones, post=ones, transpose=transpose)
        np.testing.assert_allclose(_host(out), cpu.filter(x, transpose=transpose), **tol)
    if dtype == np.float64:
        grad_w = dev.zeros(lat.num_points * (lat.dim + 1), np.float64)
        lat.weights_grad(dev.to_device(x), dev.to_device(g), grad_w, pre=ones, post=ones)
        df = _host(lat.features_grad_from(grad_w, dev.to_device(f)))
        ref = Lattice(f, dtype=np.float64).features_grad(x, g)
        np.testing.assert_allclose(df, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def _inputs(rng, shape=(2, 5, 6), n_lab=3, channels=3, dtype=np.float64):
    image = rng.integers(0, 255, shape + (channels,)).astype(np.uint8)
    logits = (rng.normal(size=shape + (n_lab,)) * 2).astype(dtype)
    return logits, image


# off the round widths whose pixel ties make finite differences meaningless (see meanfield_bwd's notes)
KW = dict(n_iter=2, theta_alpha=5.3, theta_beta=31.0, theta_gamma=2.1)

CASES = {
    "probs": dict(),
    "logits": dict(output="logits"),
    "after": dict(normalization="after"),
    "before": dict(normalization="before", output="logits"),
    "none": dict(normalization="none"),
    "matrices": dict(compat="random", w_spatial="random", w_bilateral="random"),
    "per-axis widths": dict(theta_alpha=(4.1, 6.3), theta_gamma=(1.7, 2.6), theta_beta=(20.0, 31.0, 45.0)),
    "no iterations": dict(n_iter=0),
}


def _grads_close(gc, gg, tol):
    for name in gc._fields:
        a, b = getattr(gc, name), getattr(gg, name)
        if a is None:
            assert b is None, name
            continue
        a, b = np.asarray(a, dtype=np.float64), np.asarray(_host(b), dtype=np.float64)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * (np.abs(a).max() + 1e-30), err_msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_meanfield_fwd_bwd_equal_the_cpu(case, rng):
    """Forward, and the gradients w.r.t. logits, compatibility, both kernel weights, all three widths and the image,
    equal the CPU path's to float64 rounding."""
    logits, image = _inputs(rng)
    kw = {**KW, **CASES[case]}
    n_lab = logits.shape[-1]
    for key in ("compat", "w_spatial", "w_bilateral"):
        if kw.get(key) == "random":
            kw[key] = rng.uniform(0.2, 2.0, (n_lab, n_lab))
    out_c, res_c = crfcore.meanfield_fwd(logits, image, **kw)
    out_g, res_g = crfcore.meanfield_fwd(logits, image, device="cuda", **kw)
    assert isinstance(out_g, np.ndarray) and out_g.dtype == logits.dtype
    np.testing.assert_allclose(out_g, out_c, rtol=1e-12, atol=1e-12)
    grad = rng.normal(size=logits.shape)
    _grads_close(crfcore.meanfield_bwd(res_c, grad), crfcore.meanfield_bwd(res_g, grad), 1e-10)
    _grads_close(crfcore.meanfield_bwd(res_c, grad, features=False),
                 crfcore.meanfield_bwd(res_g, grad, features=False), 1e-10)


def test_float32_gray_image_and_volumes(rng):
    """float32 to float32 rounding; a single-channel image given without its channel axis; 3-D volumes."""
    logits, image = _inputs(rng, shape=(1, 4, 5), n_lab=2, dtype=np.float32)
    gray = image[..., 0]
    out_c, res_c = crfcore.meanfield_fwd(logits, gray, **KW)
    out_g, res_g = crfcore.meanfield_fwd(logits, gray, device="cuda", **KW)
    assert out_g.dtype == np.float32
    np.testing.assert_allclose(out_g, out_c, rtol=1e-5, atol=1e-5)
    grad = rng.normal(size=logits.shape).astype(np.float32)
    gg = crfcore.meanfield_bwd(res_g, grad)
    assert gg.image.shape == gray.shape
    _grads_close(crfcore.meanfield_bwd(res_c, grad), gg, 2e-4)
    vol, vimg = _inputs(rng, shape=(3, 4, 3), n_lab=2, channels=1)
    kw = dict(KW, spatial_dims=3)
    np.testing.assert_allclose(crfcore.meanfield(vol, vimg, device="cuda", **kw), crfcore.meanfield(vol, vimg, **kw),
                               rtol=1e-12, atol=1e-12)


def test_inference_paths_equal_the_cpu(rng):
    """meanfield's own paths (no residuals): summed messages for scalar weights, apart for matrices, Z for logits."""
    logits, image = _inputs(rng, shape=(1, 5, 4))
    n_lab = logits.shape[-1]
    for kw in (dict(KW), dict(KW, w_spatial=rng.uniform(0.5, 2, (n_lab, n_lab)), compat=rng.uniform(0, 1, (n_lab,
                                                                                                          n_lab)))):
        np.testing.assert_allclose(crfcore.meanfield(logits, image, device="cuda", **kw),
                                   crfcore.meanfield(logits, image, **kw), rtol=1e-12, atol=1e-12)
        for output in ("logits", "probs"):
            a = crfcore.meanfield_fwd(logits, image, device="cuda", output=output, keep_residuals=False, **kw)
            b = crfcore.meanfield_fwd(logits, image, output=output, keep_residuals=False, **kw)
            assert a[1] is None
            np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-12)


def test_inference_is_deterministic_and_device_arrays_stay_on_the_device(rng):
    logits, image = _inputs(rng)
    q_c = crfcore.meanfield(logits, image, **KW)
    q1 = crfcore.meanfield(logits, image, device="cuda", **KW)
    q2 = crfcore.meanfield(logits, image, device="cuda", **KW)
    np.testing.assert_array_equal(q1, q2)  # no float atomics: the same bits run to run
    np.testing.assert_allclose(q1, q_c, rtol=1e-12, atol=1e-12)
    d_logits, d_image = dev.to_device(logits), dev.to_device(image)
    q_dev = crfcore.meanfield(d_logits, d_image, device="cuda", **KW)
    assert dev.is_device_array(q_dev) and not isinstance(q_dev, np.ndarray)
    np.testing.assert_array_equal(_host(q_dev), q1)
    out, res = crfcore.meanfield_fwd(d_logits, d_image, device="cuda", **KW)
    grad = rng.normal(size=logits.shape)
    g = crfcore.meanfield_bwd(res, dev.to_device(grad))
    assert dev.is_device_array(g.logits) and dev.is_device_array(g.image)
    assert isinstance(g.compat, np.ndarray) and isinstance(g.theta_alpha, float)
    ref = crfcore.meanfield_bwd(crfcore.meanfield_fwd(logits, image, **KW)[1], grad)
    _grads_close(ref, g, 1e-10)


def test_clear_errors(rng):
    logits, image = _inputs(rng)
    with pytest.raises(ValueError, match="`device` must be one of"):
        crfcore.meanfield(logits, image, device="gpu")
    bad = logits.copy()
    bad[0, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="`logits` contains 1 NaN"):
        crfcore.meanfield(dev.to_device(bad), image, device="cuda")
    with pytest.raises(TypeError, match="float32 or float64"):
        crfcore.meanfield(dev.to_device(logits.astype(np.float16)), image, device="cuda")
    with pytest.raises(ValueError, match="all axes but the last must match"):
        crfcore.meanfield(logits, image[:, :4], device="cuda")
    with pytest.raises(ValueError, match="theta_alpha"):
        crfcore.meanfield(logits, image, device="cuda", theta_alpha=-1.0)
    with pytest.raises(TypeError, match="strided"):
        crfcore.meanfield(dev.to_device(np.zeros((4, 8, 2))).__getitem__((slice(None), slice(None, None, 2))),
                          image[0, :4, :4], device="cuda")
    with pytest.raises(ValueError, match="up to 15 feature dimensions"):
        crfcore.meanfield(np.zeros((3, 3, 2)), rng.integers(0, 255, (3, 3, 14)).astype(np.uint8), device="cuda",
                          n_iter=1)
    # device arrays to a CPU computation: never a silent copy (or the framework's refusal), a pointer to device=
    for args in [(dev.to_device(logits), image), (logits, dev.to_device(image))]:
        with pytest.raises(TypeError, match="is on a CUDA device .* pass device='cuda'"):
            crfcore.meanfield(*args)
    _, res = crfcore.meanfield_fwd(logits, image, **KW)
    with pytest.raises(TypeError, match="`grad` is on a CUDA device"):
        crfcore.meanfield_bwd(res, dev.to_device(logits))
    with pytest.raises(TypeError, match="is on a CUDA device"):
        crfcore.crf(logits[0].reshape(-1, 3), [crfcore.PairwiseTerm(dev.to_device(rng.normal(size=(30, 2))))])
    _, res = crfcore.meanfield_fwd(logits, image, device="cuda", **KW)
    with pytest.raises(ValueError, match="the forward ran on cuda"):
        crfcore.meanfield_bwd(res, logits, device="cpu")
    with pytest.raises(ValueError, match="output's shape"):
        crfcore.meanfield_bwd(res, logits[:1])


def test_missing_numba_cuda_is_a_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(dev, "_checked", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'crfcore\[cuda\]'"):
        crfcore.meanfield(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)), device="cuda")


def _no_sim_env():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return env


@pytest.mark.skipif(not SIM, reason="a GPU is present: device='cuda' works here")
def test_no_gpu_and_no_simulator_is_a_clear_error():
    code = ("import numpy as np, crfcore\n"
            "try:\n"
            "    crfcore.meanfield(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)), device='cuda')\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_no_sim_env(), timeout=120)
    assert "ERR device='cuda' was asked for but no CUDA GPU is usable" in run.stdout, run.stdout + run.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in run.stdout


def test_kernels_compile_for_the_gpu():
    """Every CUDA kernel compiles to PTX for a data-centre GPU with the real compiler (NVVM) in both dtypes (the
    simulator runs them as Python and would not see a typing error), and the embedding has no fused multiply-add
    (which would move pixels on simplex boundaries to another simplex than the CPU's)."""
    run = subprocess.run([sys.executable, os.path.join(HERE, os.pardir, "tools", "cuda_compile_check.py")], capture_output=True,
                         text=True, env=_no_sim_env(), timeout=900)
    if run.returncode == 3:
        pytest.skip(f"no NVVM to compile with: {run.stdout.strip()[-300:]}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "compiled" in run.stdout


def test_torch_cuda_tensors_stay_on_the_gpu(rng):
    """The PyTorch adapter on CUDA tensors: the core's device path (no host round trip), the CPU's results and
    gradients, and torch.compile around it. Needs a GPU and a CUDA build of PyTorch."""
    torch = pytest.importorskip("torch")
    if SIM or not torch.cuda.is_available():
        pytest.skip("needs a GPU and PyTorch with CUDA")
    from crfcore.adapters import torch as adapter

    logits = torch.tensor(rng.normal(size=(2, 3, 6, 7)), dtype=torch.float64)
    image = torch.tensor(rng.integers(0, 255, (2, 3, 6, 7)), dtype=torch.float64)
    kw = dict(KW)
    outs, grads = [], []
    for device in ("cpu", "cuda"):
        lg = logits.to(device).requires_grad_()
        im = image.to(device).requires_grad_()
        out = adapter.crf_refine(lg, im, **kw)
        assert out.device.type == device
        (out * torch.arange(out.numel(), device=device).reshape(out.shape).sin()).sum().backward()
        outs.append(out.detach().cpu())
        grads.append((lg.grad.cpu(), im.grad.cpu()))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-8)
    compiled = torch.compile(lambda a, b: adapter.crf_refine(a, b, **kw) * 2)
    torch.testing.assert_close(compiled(logits.cuda(), image.cuda()).cpu(), outs[0] * 2, rtol=1e-10, atol=1e-10)
    # the fake implementations promise what the real ops return on a GPU (devices included)
    eye = torch.eye(3, dtype=torch.float64, device="cuda")
    args = (logits.cuda().requires_grad_(), image.cuda().requires_grad_(), 3.0 * eye, 10.0 * eye, 1 - eye,
            torch.tensor([5.37, 41.3, 1.73], dtype=torch.float64, device="cuda"), 2, "symmetric", True)
    torch.library.opcheck(adapter._meanfield_op, args, test_utils=("test_faketensor", "test_schema"))
    handle = adapter._meanfield_op(*args)[1]
    torch.library.opcheck(adapter._meanfield_backward_op,
                          (handle, torch.ones_like(args[0]), *(a.detach() for a in args[:6]), 2, "symmetric", True),
                          test_utils=("test_faketensor", "test_schema"))


def test_gpu_benchmark_runs_and_agrees():
    """``python -m benchmarks gpu``'s rows on a tiny size (in the simulator its times mean nothing; its results
    must still match the CPU path)."""
    from benchmarks import gpu

    result = gpu.run([10], [2], [1], 1, progress=lambda s: None)
    (row,) = result["rows"]
    for key in ("gpu_forward", "gpu_forward_backward", "cpu_forward", "cpu_forward_backward"):
        assert row[key]["median_ms"] > 0
    assert row["max_abs_diff_vs_cpu"] < 1e-5
    text = gpu.report(result)
    assert "10x10" in text
    if isinstance(row["monai_forward"], str):  # why MONAI has no column (not installed, no CUDA, a failed call)
        assert f"monai: {row['monai_forward']}" in text
