"""Gradients through the kernels' features: the lattice's ``features_grad`` and the widths/image gradients of
``meanfield_bwd``, against float64 central differences.

The lattice is piecewise linear in its features between structure changes (a point crossing a simplex boundary
adds or drops a lattice vertex, and the blur relays values through vertices, so the filter jumps there). A central
difference is therefore exact up to rounding (~1e-16 |f| / h) as long as the lattice built at ``x + h v`` and at
``x - h v`` has the same structure; every check below verifies that (and discards the rare draw where it does not).
Pixel grids put points exactly on simplex boundaries when positions divided by a width are integers or simple
fractions, so the widths here are drawn from continuous ranges.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crfcore import Lattice, meanfield_bwd, meanfield_fwd
from naive import gaussian_matrix

H = 1e-6


def structure(lattices):
    return [(lat.arrays.offsets.tobytes(), lat.arrays.remap.tobytes()) for lat in lattices]


def res_lattices(res):
    return [k.lattice for r in res.per_image for k in r.model.kernels]


@settings(max_examples=60)
@given(
    d=st.integers(1, 8),
    n=st.integers(1, 150),
    c=st.integers(1, 3),
    spread=st.floats(0.3, 6.0),
    transpose=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_lattice_features_grad_matches_finite_differences(d, n, c, spread, transpose, seed):
    rng = np.random.default_rng(seed)
    f = rng.normal(scale=spread, size=(n, d))
    x, g = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    lat = Lattice(f, dtype=np.float64)
    df = lat.features_grad(x, g, transpose=transpose)
    assert df.shape == (n, d) and df.dtype == np.float64
    for _ in range(2):
        v = rng.normal(size=f.shape)
        plus, minus = Lattice(f + H * v, dtype=np.float64), Lattice(f - H * v, dtype=np.float64)
        assume(structure([plus]) == structure([minus]) == structure([lat]))
        numeric = (np.sum(g * plus.filter(x, transpose)) - np.sum(g * minus.filter(x, transpose))) / (2 * H)
        scale = np.sum(np.abs(g) * lat.filter(np.abs(x), transpose))
        np.testing.assert_allclose(np.sum(df * v), numeric, rtol=1e-6, atol=1e-9 * max(scale, 1.0))


def _dense_normalised_filter_grad(f, v, g, width=1.0):
    """d/df of sum(g * (G v) / (G 1)) for the exact Gaussian G of features f / width (by hand)."""
    big_g = gaussian_matrix(f / width)
    num, den = big_g @ v, big_g.sum(1, keepdims=True)
    a = g / den * v.T - g * num / den**2  # dl/dG_ij
    b = (a + a.T) * big_g
    return -(b.sum(1)[:, None] * (f / width) - b @ (f / width)) / width


@pytest.mark.parametrize("d, wrong_widths", [(1, (0.8,)), (2, (0.8, 1.2)), (3, (0.8, 1.2))])
def test_features_grad_approximates_the_gaussians_derivative(rng, d, wrong_widths):
    # The lattice's derivative is that of its piecewise-linear interpolation, so pointwise it is rough (about
    # 20 % relative L2 error against the ideal Gaussian's), but along smooth perturbations of the features
    # (what a width or a smooth guidance image moves) it follows the ideal derivative. Measured over 4 seeds,
    # mean relative error over three smooth directions vanishing at the sample's border (sums of df * phi):
    # 1.2-5.2 % at d = 2, 3, against 7-45 % for the exact derivatives of widths 0.8-0.9 and 1.1-1.2. In 1-D the
    # lattice's kernel (tent * blur * tent, compact support) has heavier shoulders than the Gaussian: 0.9-5.6 %
    # at width 1, and widths 1.1-1.2 fit about as well, so only 0.8 is told apart there.
    # Tolerance: 7 % mean and 12 % for any direction; a wrong width at least twice as far.
    n = 1000 if d == 1 else 3000
    f = rng.uniform(-4, 4, size=(n, d))
    v = np.sin(0.8 * f[:, :1]) + np.cos(0.5 * f[:, -1:])
    g = np.cos(0.6 * f[:, :1]) + 0.5
    lat = Lattice(f, dtype=np.float64)
    num, den = lat.filter(v), lat.filter(np.ones((n, 1)))
    approx = lat.features_grad(v, g / den) + lat.features_grad(np.ones((n, 1)), -g * num / den**2)
    bump = np.prod(np.cos(np.pi * f / 8) ** 2, axis=1, keepdims=True)  # zero on the sample's border
    directions = [f * bump, np.sin(0.7 * f + 0.3) * bump, 0.1 * f**2 * bump]

    def errors(width):
        exact = _dense_normalised_filter_grad(f, v, g, width)
        return [abs(np.sum((approx - exact) * phi)) / abs(np.sum(exact * phi)) for phi in directions]

    ours = errors(1.0)
    assert np.mean(ours) < 0.07 and max(ours) < 0.12, ours
    for width in wrong_widths:
        assert np.mean(errors(width)) > 2 * np.mean(ours), (width, errors(width), ours)


def test_features_grad_float32_values_and_errors(rng):
    f = rng.normal(size=(200, 3))
    x, g = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    lat = Lattice(f)
    ref = lat.features_grad(x, g)
    df32 = lat.features_grad(x.astype(np.float32), g.astype(np.float32))
    np.testing.assert_allclose(df32, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(lat.features_grad(x[:, 0], g[:, 0]), lat.features_grad(x[:, :1], g[:, :1]))
    with pytest.raises(ValueError, match="`grad` must have the shape"):
        lat.features_grad(x, g[:, :1])
    with pytest.raises(ValueError, match=r"`values` must have shape \(200, C\)"):
        lat.features_grad(x[:10], g[:10])
    with pytest.raises(ValueError, match="`grad` contains"):
        lat.features_grad(x, np.full_like(g, np.nan))
    with pytest.raises(TypeError, match="`transpose` must be True or False"):
        lat.features_grad(x, g, transpose="no")
    with pytest.raises(ValueError, match="keep_features=False"):
        Lattice(f, keep_features=False).features_grad(x, g)
    with pytest.raises(TypeError, match="`dtype`"):
        Lattice(f, dtype=np.int32)


def test_features_grad_same_whatever_the_thread_count(rng):
    import numba

    f = rng.normal(scale=3, size=(20000, 5))  # several chunks
    x, g = rng.normal(size=(20000, 2)), rng.normal(size=(20000, 2))
    before = numba.get_num_threads()
    try:
        outs = []
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            outs.append(Lattice(f).features_grad(x, g))
    finally:
        numba.set_num_threads(before)
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])


@st.composite
def problems(draw):
    three_d = draw(st.booleans())
    spatial = tuple(draw(st.integers(2, 5)) for _ in range(3 if three_d else 2))
    n_sp = len(spatial)
    channels = draw(st.sampled_from([0, 1, 3, 4]))  # 0: a grey image without its channel axis
    per_dim = draw(st.booleans())
    return dict(
        spatial=spatial,
        channels=channels,
        n_lab=draw(st.integers(2, 4)),
        batch=draw(st.integers(1, 2)),
        n_iter=draw(st.integers(1, 4)),
        normalization=draw(st.sampled_from(["symmetric", "after", "before", "none"])),
        output=draw(st.sampled_from(["probs", "logits"])),
        theta_alpha=draw(st.lists(st.floats(1.1, 4.9), min_size=n_sp, max_size=n_sp)) if per_dim else
        draw(st.floats(1.1, 4.9)),
        theta_beta=draw(st.lists(st.floats(20, 90), min_size=max(channels, 1), max_size=max(channels, 1)))
        if per_dim else draw(st.floats(20, 90)),
        theta_gamma=draw(st.lists(st.floats(0.7, 3.3), min_size=n_sp, max_size=n_sp)) if per_dim else
        draw(st.floats(0.7, 3.3)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=50)
@given(problems())
def test_meanfield_width_and_image_gradients_match_finite_differences(p):
    rng = np.random.default_rng(p["seed"])
    shape = (p["batch"], *p["spatial"])
    logits = rng.normal(scale=2.0, size=shape + (p["n_lab"],))
    image = rng.uniform(0, 255, size=shape + ((p["channels"],) if p["channels"] else ()))
    small = 0.05 if p["normalization"] == "none" else 1.0
    kw = dict(n_iter=p["n_iter"], normalization=p["normalization"], output=p["output"],
              spatial_dims=len(p["spatial"]), w_spatial=small * 2.0, w_bilateral=small * 3.0,
              compat=rng.normal(size=(p["n_lab"], p["n_lab"])))
    args = dict(theta_alpha=p["theta_alpha"], theta_beta=p["theta_beta"], theta_gamma=p["theta_gamma"], image=image)
    args = {k: np.asarray(v, dtype=np.float64) if isinstance(v, list) else v for k, v in args.items()}

    def forward(**change):
        a = {**args, **change}
        return meanfield_fwd(logits, a.pop("image"), **a, **kw)

    out, res = forward()
    g = rng.normal(size=out.shape)
    grads = meanfield_bwd(res, g)
    base = structure(res_lattices(res))
    scale = abs(np.sum(out * g)) + 1.0
    for name in ("theta_alpha", "theta_beta", "theta_gamma", "image"):
        x, analytic = args[name], getattr(grads, name)
        assert np.shape(analytic) == np.shape(x) and type(analytic) is type(x)
        v = rng.normal(size=np.shape(x))
        (o_plus, r_plus), (o_minus, r_minus) = forward(**{name: x + H * v}), forward(**{name: x - H * v})
        assume(structure(res_lattices(r_plus)) == structure(res_lattices(r_minus)) == base)
        numeric = (np.sum(o_plus * g) - np.sum(o_minus * g)) / (2 * H)
        np.testing.assert_allclose(np.sum(analytic * v), numeric, rtol=1e-5, atol=1e-8 * scale, err_msg=name)


def test_features_false_and_zero_iterations(rng):
    logits = rng.normal(size=(2, 6, 7, 3))
    image = rng.uniform(0, 255, size=(2, 6, 7, 3))
    out, res = meanfield_fwd(logits, image, n_iter=3, theta_alpha=[3.3, 4.1])
    g = rng.normal(size=out.shape)
    full, bare = meanfield_bwd(res, g), meanfield_bwd(res, g, features=False)
    assert bare.theta_alpha is bare.theta_beta is bare.theta_gamma is bare.image is None
    for a, b in zip(full[:4], bare[:4]):  # the other gradients do not depend on the flag
        np.testing.assert_array_equal(a, b)
    assert full.theta_alpha.shape == (2,) and isinstance(full.theta_beta, float)
    _, res0 = meanfield_fwd(logits, image, n_iter=0)
    zero = meanfield_bwd(res0, g)
    assert zero.theta_alpha == zero.theta_beta == zero.theta_gamma == 0.0 and not zero.image.any()
    with pytest.raises(TypeError, match="`features` must be True or False"):
        meanfield_bwd(res, g, features="yes")


def test_float32_width_gradients_close_to_float64(rng):
    logits = rng.normal(size=(2, 12, 10, 3))
    image = rng.uniform(0, 255, size=(2, 12, 10, 3))
    g = rng.normal(size=logits.shape)
    kw = dict(n_iter=4, theta_alpha=5.3, theta_beta=41.7, theta_gamma=2.3)
    r64 = meanfield_bwd(meanfield_fwd(logits, image, **kw)[1], g)
    r32 = meanfield_bwd(meanfield_fwd(logits.astype(np.float32), image, **kw)[1], g)
    assert r32.image.dtype == np.float32 and r64.image.dtype == np.float64
    for name in ("theta_alpha", "theta_beta", "theta_gamma"):
        np.testing.assert_allclose(getattr(r32, name), getattr(r64, name), rtol=2e-3, err_msg=name)
    np.testing.assert_allclose(r32.image, r64.image, rtol=1e-2, atol=1e-3 * np.abs(r64.image).max())


def test_uint8_image_and_grey_without_channel_axis(rng):
    logits = rng.normal(size=(9, 11, 2)).astype(np.float32)
    grey = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    out, res = meanfield_fwd(logits, grey, n_iter=2, theta_beta=[17.3])
    grads = meanfield_bwd(res, np.ones_like(out))
    assert grads.image.shape == (9, 11) and grads.image.dtype == np.float32
    assert grads.theta_beta.shape == (1,) and np.isfinite(grads.theta_beta).all()
    same, res2 = meanfield_fwd(logits, grey[..., None], n_iter=2, theta_beta=17.3)
    np.testing.assert_array_equal(out, same)
    np.testing.assert_allclose(meanfield_bwd(res2, np.ones_like(out)).theta_beta, grads.theta_beta[0])
