"""Finite-difference checks of meanfield_bwd, in float64, along random directions.

For a loss ``f = <G, out>`` with a random cotangent ``G``, the analytic directional derivative ``<grad, v>`` must
equal the central difference ``(f(x + h v) - f(x - h v)) / 2h``. With ``h = 1e-5`` the truncation error is
O(h^2 |f'''|) ~ 1e-9 and the rounding error ~ 1e-16 |f| / h ~ 1e-10 for |f| of order 10, so a relative
tolerance of 1e-6 on each probe (plus a small absolute floor) separates a correct gradient from any real bug.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crfcore import meanfield_bwd, meanfield_fwd

H = 1e-5


def _close(analytic, numeric, scale):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8 * max(1.0, scale))


@st.composite
def problems(draw):
    n_lab = draw(st.integers(2, 5))
    three_d = draw(st.booleans())
    spatial = tuple(draw(st.integers(2, 5)) for _ in range(3 if three_d else 2))
    batch = draw(st.integers(1, 2))
    return dict(
        n_lab=n_lab,
        spatial=spatial,
        batch=batch,
        n_iter=draw(st.integers(0, 5)),
        normalization=draw(st.sampled_from(["symmetric", "after", "before", "none"])),
        output=draw(st.sampled_from(["probs", "logits"])),
        matrix_weights=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=80)
@given(problems())
def test_gradients_match_finite_differences(p):
    rng = np.random.default_rng(p["seed"])
    n_lab, spatial = p["n_lab"], p["spatial"]
    logits = rng.normal(scale=2.0, size=(p["batch"], *spatial, n_lab))
    image = rng.uniform(0, 255, size=(p["batch"], *spatial, 3))
    small = 0.05 if p["normalization"] == "none" else 1.0  # unnormalised kernels sum to tens
    if p["matrix_weights"]:
        w_s, w_b = small * rng.normal(size=(n_lab, n_lab)), small * rng.normal(size=(n_lab, n_lab))
    else:
        w_s, w_b = small * rng.uniform(0.5, 3), small * rng.uniform(0.5, 5)
    compat = rng.normal(size=(n_lab, n_lab))
    kw = dict(n_iter=p["n_iter"], theta_alpha=2.0, theta_beta=60.0, theta_gamma=1.5,
              normalization=p["normalization"], output=p["output"], spatial_dims=len(spatial))
    args = dict(logits=logits, w_spatial=w_s, w_bilateral=w_b, compat=compat)

    def loss(**change):
        a = {**args, **change}
        out, _ = meanfield_fwd(a.pop("logits"), image, **a, **kw)
        return np.sum(out * g)

    out, res = meanfield_fwd(logits, image, w_spatial=w_s, w_bilateral=w_b, compat=compat, **kw)
    g = rng.normal(size=out.shape)
    grads = meanfield_bwd(res, g)
    assert grads.logits.shape == logits.shape and grads.compat.shape == (n_lab, n_lab)
    scale = abs(loss())
    for name, analytic in [("logits", grads.logits), ("compat", grads.compat), ("w_spatial", grads.w_spatial),
                           ("w_bilateral", grads.w_bilateral)]:
        x = args[name]
        assert np.shape(analytic) == np.shape(x)
        for _ in range(2):
            v = rng.normal(size=np.shape(x))
            numeric = (loss(**{name: x + H * v}) - loss(**{name: x - H * v})) / (2 * H)
            _close(np.sum(analytic * v), numeric, scale)


def test_zero_iterations_gradient_is_softmax_vjp(rng):
    logits = rng.normal(size=(4, 5, 3))
    out, res = meanfield_fwd(logits, np.zeros((4, 5, 1)), n_iter=0)
    g = rng.normal(size=out.shape)
    grads = meanfield_bwd(res, g)
    expected = out * (g - (out * g).sum(-1, keepdims=True))
    np.testing.assert_allclose(grads.logits, expected, rtol=1e-12)
    assert not grads.compat.any() and grads.w_spatial == 0.0 and grads.w_bilateral == 0.0


def test_float32_gradients_close_to_float64(rng):
    logits = rng.normal(size=(2, 12, 10, 3))
    image = rng.uniform(0, 255, size=(2, 12, 10, 3))
    g = rng.normal(size=logits.shape)
    r64 = meanfield_bwd(meanfield_fwd(logits, image, n_iter=5)[1], g)
    r32 = meanfield_bwd(meanfield_fwd(logits.astype(np.float32), image, n_iter=5)[1], g)
    assert r32.logits.dtype == np.float32
    np.testing.assert_allclose(r32.logits, r64.logits, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(r32.compat, r64.compat, atol=1e-3, rtol=1e-4)


def test_backward_input_errors(rng):
    logits = rng.normal(size=(4, 5, 2))
    out, res = meanfield_fwd(logits, np.zeros((4, 5)), n_iter=2)
    with pytest.raises(ValueError, match="shape"):
        meanfield_bwd(res, np.ones((4, 5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        meanfield_bwd(res, np.full(out.shape, np.nan))
    with pytest.raises(TypeError, match="residuals"):
        meanfield_bwd(None, np.ones(out.shape))
    _, none = meanfield_fwd(logits, np.zeros((4, 5)), keep_residuals=False)
    assert none is None
