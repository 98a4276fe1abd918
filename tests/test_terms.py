"""crfcore.crf / crf_fwd / crf_bwd: a dense CRF with any list of pairwise terms, on the same engine as meanfield."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import crfcore
from crfcore import Lattice, PairwiseTerm, crf, crf_bwd, crf_fwd
from crfcore.features import bilateral_features, spatial_features
from naive import dense_operator, normalise, softmax

H = 1e-6


def image_terms(rng, h=12, w=14):
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    fs = spatial_features((h, w), 3.0)
    fb = bilateral_features(img.reshape(-1, 3), (h, w), 80.0, 13.0)
    return img, fs, fb


def test_two_terms_are_meanfield_bit_for_bit(rng):
    img, fs, fb = image_terms(rng, 30, 40)
    logits = rng.normal(size=(30, 40, 3)).astype(np.float32)
    terms = [PairwiseTerm(fs, 3.0), PairwiseTerm(fb, 10.0)]
    np.testing.assert_array_equal(crf(logits.reshape(-1, 3), terms), crfcore.meanfield(logits, img).reshape(-1, 3))
    z, res = crf_fwd(logits.reshape(-1, 3), terms, output="logits")
    z_ref, res_ref = crfcore.meanfield_fwd(logits, img, output="logits")
    np.testing.assert_array_equal(z, z_ref.reshape(-1, 3))
    g = rng.normal(size=z.shape).astype(np.float32)
    ours, ref = crf_bwd(res, g), crfcore.meanfield_bwd(res_ref, g.reshape(z_ref.shape), features=False)
    np.testing.assert_array_equal(ours.logits, ref.logits.reshape(-1, 3))
    assert ours.terms[0].weight == ref.w_spatial and ours.terms[1].weight == ref.w_bilateral
    np.testing.assert_allclose(ours.terms[0].compat + ours.terms[1].compat, ref.compat, rtol=1e-12)


@pytest.mark.parametrize("n_terms", [1, 3, 4])
def test_any_number_of_terms_against_a_dense_oracle(rng, n_terms):
    # the lattices' exact operators, an independent dense mean field with one matrix per term
    n, n_lab = 60, 3
    feats = [rng.normal(scale=1.5, size=(n, d)) for d in (2, 5, 3, 1)[:n_terms]]
    norms = ["symmetric", "after", "before", "none"][:n_terms]
    weights = [rng.uniform(0.5, 3), rng.normal(size=(n_lab, n_lab)), 0.7, rng.uniform(0.1, 0.3)][:n_terms]
    compats = [None, rng.normal(size=(n_lab, n_lab)), None, np.eye(n_lab)][:n_terms]
    terms = [PairwiseTerm(f, w, c, nm) for f, w, c, nm in zip(feats, weights, compats, norms)]
    logits = rng.normal(size=(n, n_lab))
    ops = [normalise(dense_operator(Lattice(f, dtype=np.float64), n), nm) for f, nm in zip(feats, norms)]
    mats = [(1 - np.eye(n_lab) if c is None else c) @ (w * np.eye(n_lab) if np.ndim(w) == 0 else w)
            for w, c in zip(weights, compats)]
    z = logits.copy()
    for _ in range(4):
        q = softmax(z)
        z = logits - sum((k @ q) @ a.T for k, a in zip(ops, mats))
    np.testing.assert_allclose(crf_fwd(logits, terms, n_iter=4, output="logits")[0], z, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(crf(logits, terms, n_iter=4), softmax(z), atol=1e-12)


@st.composite
def problems(draw):
    n_terms = draw(st.integers(1, 4))
    n_lab = draw(st.integers(2, 4))
    return dict(
        n=draw(st.integers(2, 40)),
        n_lab=n_lab,
        dims=[draw(st.integers(1, 4)) for _ in range(n_terms)],
        norms=[draw(st.sampled_from(["symmetric", "after", "before", "none"])) for _ in range(n_terms)],
        matrix=[draw(st.booleans()) for _ in range(n_terms)],
        compat=[draw(st.booleans()) for _ in range(n_terms)],
        n_iter=draw(st.integers(0, 4)),
        output=draw(st.sampled_from(["probs", "logits"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=60)
@given(problems())
def test_gradients_match_finite_differences(p):
    rng = np.random.default_rng(p["seed"])
    n, n_lab = p["n"], p["n_lab"]
    logits = rng.normal(scale=2.0, size=(n, n_lab))
    terms = []
    for d, nm, mat, comp in zip(p["dims"], p["norms"], p["matrix"], p["compat"]):
        small = 0.1 if nm == "none" else 1.0
        w = small * (rng.normal(size=(n_lab, n_lab)) if mat else rng.uniform(0.5, 3))
        terms.append(PairwiseTerm(rng.normal(scale=1.5, size=(n, d)), w,
                                  rng.normal(size=(n_lab, n_lab)) if comp else None, nm))
    kw = dict(n_iter=p["n_iter"], output=p["output"])
    out, res = crf_fwd(logits, terms, **kw)
    g = rng.normal(size=out.shape)
    grads = crf_bwd(res, g, features=True)
    scale = abs(np.sum(out * g)) + 1.0

    def loss(lg=logits, ts=terms):
        o, r = crf_fwd(lg, ts, **kw)
        return np.sum(o * g), [(k.lattice.arrays.offsets.tobytes(), k.lattice.arrays.remap.tobytes())
                               for k in r.model.kernels]

    base = loss()[1]
    v = rng.normal(size=logits.shape)
    numeric = (loss(lg=logits + H * v)[0] - loss(lg=logits - H * v)[0]) / (2 * H)
    np.testing.assert_allclose(np.sum(grads.logits * v), numeric, rtol=1e-6, atol=1e-8 * scale)
    for k, t in enumerate(terms):
        for field in ("weight", "compat", "features"):
            x = t._asdict()[field]
            x = (1 - np.eye(n_lab)) if x is None else x
            v = rng.normal(size=np.shape(x))
            moved = [[tt._replace(**{field: x + s * H * v}) if j == k else tt for j, tt in enumerate(terms)]
                     for s in (1, -1)]
            (lp, sp), (lm, sm) = loss(ts=moved[0]), loss(ts=moved[1])
            assume(sp == sm == base)  # no point crossed a simplex boundary
            analytic = np.sum(np.asarray(getattr(grads.terms[k], field)) * v)
            np.testing.assert_allclose(analytic, (lp - lm) / (2 * H), rtol=1e-5, atol=1e-8 * scale,
                                       err_msg=f"term {k} {field}")


def test_float32_and_errors(rng):
    img, fs, fb = image_terms(rng)
    logits = rng.normal(size=(fs.shape[0], 2))
    terms = [PairwiseTerm(fs, 3.0), PairwiseTerm(fb, 10.0)]
    q64 = crf(logits, terms)
    q32 = crf(logits.astype(np.float32), terms)
    assert q32.dtype == np.float32 and q64.dtype == np.float64
    np.testing.assert_allclose(q32, q64, atol=1e-5)
    with pytest.raises(ValueError, match=r"`terms\[1\].features` must have shape \(168, d\)"):
        crf(logits, [terms[0], PairwiseTerm(fb[:10], 1.0)])
    with pytest.raises(ValueError, match="`terms` is empty"):
        crf(logits, [])
    with pytest.raises(ValueError, match=r"`terms\[0\].weight` must be a scalar or have shape \(2, 2\)"):
        crf(logits, [PairwiseTerm(fs, np.ones(3))])
    with pytest.raises(ValueError, match=r"`terms\[0\].compat` must be None"):
        crf(logits, [PairwiseTerm(fs, 1.0, 2.0)])
    with pytest.raises(ValueError, match=r"`terms\[0\].normalization`"):
        crf(logits, [PairwiseTerm(fs, 1.0, None, "NORMALIZE_SYMMETRIC")])
    with pytest.raises(ValueError, match=r"`terms\[0\].features` contains"):
        crf(logits, [PairwiseTerm(np.full_like(fs, np.nan))])
    with pytest.raises(TypeError, match=r"`terms\[0\]` must be a crfcore.PairwiseTerm"):
        crf(logits, ["features"])
    with pytest.raises(ValueError, match="L >= 2"):
        crf(logits[:, :1], terms)
    with pytest.raises(ValueError, match=r"shape \(N, L\)"):
        crf(logits[None], terms)
    _, res = crf_fwd(logits, terms)
    with pytest.raises(ValueError, match="`grad` must have the output's shape"):
        crf_bwd(res, np.ones((3, 2)))
    with pytest.raises(TypeError, match="`residuals`"):
        crf_bwd(None, logits)
