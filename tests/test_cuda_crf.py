"""crfcore.crf / crf_fwd / crf_bwd with device="cuda" (any list of pairwise terms) against the CPU path.

Without a GPU these run in Numba's CUDA simulator (tests/conftest.py); on a machine with a GPU, on it.
"""

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason="device='cuda' needs numba-cuda: pip install 'crfcore[cuda]'")

import crfcore  # noqa: E402
from crfcore import PairwiseTerm  # noqa: E402
from crfcore._cuda import device as dev  # noqa: E402

N, L = 28, 3
NORMS = ("symmetric", "after", "before", "none")


def _host(x):
    return dev.to_host(x) if dev.is_device_array(x) else np.asarray(x)


def _terms(rng, n_terms, matrices):
    """``n_terms`` terms of 2 to 4 feature dimensions, every normalisation; with ``matrices``, (L, L) weights and
    compatibilities on some terms (else scalar weights and Potts: the messages can be summed)."""
    terms = []
    for k in range(n_terms):
        f = rng.normal(size=(N, 2 + k % 3)) * 1.3
        w = rng.uniform(0.2, 1.0, (L, L)) if matrices and k % 2 else float(rng.uniform(0.5, 2.0))
        compat = rng.uniform(0.0, 1.0, (L, L)) if matrices and k == 2 else None
        terms.append(PairwiseTerm(f, w, compat, NORMS[k % 4]))
    return terms


def _close(gc, gg, tol):
    def check(a, b, name):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(_host(b), dtype=np.float64)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * (np.abs(a).max() + 1e-30), err_msg=name)

    check(gc.logits, gg.logits, "logits")
    assert len(gc.terms) == len(gg.terms)
    for k, (a, b) in enumerate(zip(gc.terms, gg.terms)):
        check(a.weight, b.weight, f"terms[{k}].weight")
        check(a.compat, b.compat, f"terms[{k}].compat")
        if a.features is None:
            assert b.features is None
        else:
            check(a.features, b.features, f"terms[{k}].features")


@pytest.mark.parametrize("n_terms,matrices,output,n_iter", [
    (1, False, "probs", 2),  # one term: the absent second message
    (2, False, "logits", 2),
    (3, True, "probs", 2),  # a message subtracted before the fused kernel; an odd count taken two by two
    (4, True, "logits", 3),
    (2, True, "probs", 0),
])
def test_crf_fwd_bwd_equal_the_cpu(n_terms, matrices, output, n_iter, rng):
    """Output and the gradients w.r.t. logits, every term's weight, compatibility and features equal the CPU's to
    float64 rounding, for one to four terms with every normalisation."""
    terms = _terms(rng, n_terms, matrices)
    logits = rng.normal(size=(N, L)) * 2
    out_c, res_c = crfcore.crf_fwd(logits, terms, n_iter=n_iter, output=output)
    out_g, res_g = crfcore.crf_fwd(logits, terms, n_iter=n_iter, output=output, device="cuda")
    assert isinstance(out_g, np.ndarray) and out_g.dtype == np.float64
    np.testing.assert_allclose(out_g, out_c, rtol=1e-12, atol=1e-12)
    grad = rng.normal(size=(N, L))
    _close(crfcore.crf_bwd(res_c, grad), crfcore.crf_bwd(res_g, grad), 1e-10)
    _close(crfcore.crf_bwd(res_c, grad, features=False), crfcore.crf_bwd(res_g, grad, features=False), 1e-10)


@pytest.mark.parametrize("matrices", [False, True])
def test_crf_inference_equals_the_cpu(matrices, rng):
    """crf's own path (summed messages for scalar weights and one compatibility, apart otherwise) and float32."""
    terms = _terms(rng, 3, matrices)
    logits = rng.normal(size=(N, L)) * 2
    np.testing.assert_allclose(crfcore.crf(logits, terms, device="cuda"), crfcore.crf(logits, terms),
                               rtol=1e-12, atol=1e-12)
    u32 = logits.astype(np.float32)
    q = crfcore.crf(u32, terms, device="cuda")
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, crfcore.crf(u32, terms), rtol=1e-5, atol=1e-5)


def test_device_arrays_stay_on_the_device(rng):
    """Device logits give a device output and logits gradient; device features (float32 ones are widened on the
    device) give device feature gradients, host features host ones; the result is the same as from NumPy."""
    terms = _terms(rng, 2, True)
    logits = rng.normal(size=(N, L)) * 2
    dev_terms = [terms[0]._replace(features=dev.to_device(terms[0].features.astype(np.float32))), terms[1]]
    out, res = crfcore.crf_fwd(dev.to_device(logits), dev_terms, device="cuda")
    assert dev.is_device_array(out) and not isinstance(out, np.ndarray)
    ref_terms = [terms[0]._replace(features=terms[0].features.astype(np.float32).astype(np.float64)), terms[1]]
    out_c, res_c = crfcore.crf_fwd(logits, ref_terms)
    np.testing.assert_allclose(_host(out), out_c, rtol=1e-12, atol=1e-12)
    grad = rng.normal(size=(N, L))
    g = crfcore.crf_bwd(res, dev.to_device(grad))
    assert dev.is_device_array(g.logits) and dev.is_device_array(g.terms[0].features)
    assert isinstance(g.terms[1].features, np.ndarray) and isinstance(g.terms[0].weight, float)
    _close(crfcore.crf_bwd(res_c, grad), g, 1e-10)
    q1 = crfcore.crf(logits, terms, device="cuda")
    np.testing.assert_array_equal(q1, crfcore.crf(logits, terms, device="cuda"))  # the same bits run to run


def test_clear_errors(rng):
    terms = _terms(rng, 2, False)
    logits = rng.normal(size=(N, L))
    with pytest.raises(ValueError, match="`device` must be one of"):
        crfcore.crf(logits, terms, device="gpu")
    with pytest.raises(ValueError, match=r"`terms\[1\].features` must have shape \(28, d\)"):
        crfcore.crf(logits, [terms[0], terms[1]._replace(features=dev.to_device(np.zeros((5, 2))))], device="cuda")
    with pytest.raises(TypeError, match=r"`terms\[0\].features` on the device must be float32 or float64"):
        crfcore.crf(logits, [terms[0]._replace(features=dev.to_device(np.zeros((N, 2), np.int32)))], device="cuda")
    bad = terms[0].features.copy()
    bad[3, 1] = np.inf
    for f in (bad, dev.to_device(bad)):
        with pytest.raises(ValueError, match=r"`terms\[0\].features` contains 1 NaN or infinite"):
            crfcore.crf(logits, [terms[0]._replace(features=f)], device="cuda")
    with pytest.raises(ValueError, match="a CRF needs L >= 2"):
        crfcore.crf(logits[:, :1], terms, device="cuda")
    with pytest.raises(ValueError, match="`n_iter` must be an int"):
        crfcore.crf(logits, terms, n_iter=-1, device="cuda")
    with pytest.raises(ValueError, match="`terms` is empty"):
        crfcore.crf(logits, [], device="cuda")
    with pytest.raises(ValueError, match=r"`terms\[0\].normalization`"):
        crfcore.crf(logits, [terms[0]._replace(normalization="both")], device="cuda")
    with pytest.raises(ValueError, match="up to 15 feature dimensions"):
        crfcore.crf(logits, [terms[0]._replace(features=rng.normal(size=(N, 16)))], device="cuda")
    _, res = crfcore.crf_fwd(logits, terms, device="cuda")
    with pytest.raises(ValueError, match="the forward ran on cuda"):
        crfcore.crf_bwd(res, logits, device="cpu")
    with pytest.raises(ValueError, match="output's shape"):
        crfcore.crf_bwd(res, logits[:3])
    with pytest.raises(TypeError, match="`features` must be True or False"):
        crfcore.crf_bwd(res, logits, features="yes")
    _, res_cpu = crfcore.crf_fwd(logits, terms)
    with pytest.raises(ValueError, match="the forward ran on cpu"):
        crfcore.crf_bwd(res_cpu, logits, device="cuda")


def test_missing_numba_cuda_is_a_clear_error(monkeypatch, rng):
    import importlib.util

    monkeypatch.setattr(dev, "_checked", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'crfcore\[cuda\]'"):
        crfcore.crf(rng.normal(size=(N, L)), _terms(rng, 1, False), device="cuda")


def test_minus_inf_logits_are_impossible_labels_on_cuda(rng):
    """-inf logits: the same probabilities and finite gradients as on the CPU; a point with no label left and +inf
    logits stay errors (checked on the host only when the device's range pass finds non-finite values)."""
    logits = rng.normal(size=(N, L))
    logits[[2, 7, 11], [0, 2, 1]] = -np.inf
    terms = _terms(rng, 2, False)
    q_cpu, res_cpu = crfcore.crf_fwd(logits, terms, n_iter=3)
    q_gpu, res_gpu = crfcore.crf_fwd(logits, terms, n_iter=3, device="cuda")
    np.testing.assert_allclose(_host(q_gpu), q_cpu, atol=1e-12)
    assert (q_cpu[np.isneginf(logits)] == 0).all()
    g = rng.normal(size=(N, L))
    _close(crfcore.crf_bwd(res_cpu, g), crfcore.crf_bwd(res_gpu, g), 1e-9)
    assert np.isfinite(_host(crfcore.crf_bwd(crfcore.crf_fwd(logits, terms, n_iter=3, device="cuda")[1], g).logits)).all()
    image = rng.uniform(0, 255, size=(4, 7, 3))
    grid = logits.reshape(4, 7, L)
    np.testing.assert_allclose(_host(crfcore.meanfield(grid, image, n_iter=2, device="cuda")),
                               crfcore.meanfield(grid, image, n_iter=2), atol=1e-12)
    for bad, match in ((np.inf, r"\+inf"), (-np.inf, "every label impossible")):
        wrong = logits.copy()
        wrong[5] = bad
        with pytest.raises(ValueError, match=match):
            crfcore.crf(wrong, terms, device="cuda")


@pytest.mark.parametrize("output,compat", [("probs", None), ("logits", "matrix")])
def test_meanfield_is_crf_with_its_two_terms_on_cuda(output, compat, rng):
    """Meanfield on the device runs crf's path with its spatial and bilateral terms: the same bits forward, the
    same logits gradient, and its parameter gradients are those of the two terms."""
    from crfcore.features import bilateral_features, spatial_features

    shape, kw = (4, 7), dict(theta_alpha=5.3, theta_beta=31.0, theta_gamma=2.1, w_spatial=1.7, w_bilateral=0.6)
    mu = rng.uniform(0.0, 1.0, (L, L)) if compat else crfcore.potts(L)
    image = rng.integers(0, 255, shape + (3,)).astype(np.uint8)
    logits = rng.normal(size=shape + (L,)) * 2
    flat = image.reshape(-1, 3)
    terms = [PairwiseTerm(spatial_features(shape, kw["theta_gamma"]), kw["w_spatial"], mu),
             PairwiseTerm(bilateral_features(flat, shape, kw["theta_alpha"], kw["theta_beta"]), kw["w_bilateral"], mu)]
    out_m, res_m = crfcore.meanfield_fwd(logits, image, n_iter=2, output=output, compat=mu, device="cuda", **kw)
    out_c, res_c = crfcore.crf_fwd(logits.reshape(-1, L), terms, n_iter=2, output=output, device="cuda")
    np.testing.assert_array_equal(out_m.reshape(-1, L), out_c)
    grad = rng.normal(size=logits.shape)
    gm = crfcore.meanfield_bwd(res_m, grad)
    gc = crfcore.crf_bwd(res_c, grad.reshape(-1, L))
    np.testing.assert_array_equal(_host(gm.logits).reshape(-1, L), _host(gc.logits))
    for mine, term in ((gm.w_spatial, gc.terms[0]), (gm.w_bilateral, gc.terms[1])):
        np.testing.assert_allclose(mine, term.weight, rtol=1e-12)
    np.testing.assert_allclose(gm.compat, gc.terms[0].compat + gc.terms[1].compat, rtol=1e-12, atol=1e-14)
    df_s, df_b = (_host(t.features) for t in gc.terms)
    np.testing.assert_allclose(gm.theta_gamma, -(df_s * terms[0].features).sum() / kw["theta_gamma"], rtol=1e-10)
    np.testing.assert_allclose(_host(gm.image).reshape(-1, 3), df_b[:, 2:] / kw["theta_beta"], rtol=1e-12)
