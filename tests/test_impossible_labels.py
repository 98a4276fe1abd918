"""-inf logits (+inf energies): a label that is impossible at a pixel, as densecrf treats a saturated -log(p).

The oracle is the same CRF with the -inf replaced by a very negative finite logit (-1e4): its probability underflows
to exactly 0 there too, so every output and gradient must agree. NaN, +inf and a pixel whose every label is
impossible stay clear errors (tests/test_errors.py, tests/test_pydensecrf_clients.py).
"""

import importlib.util

import numpy as np
import pytest

from crfcore import PairwiseTerm, crf, crf_bwd, crf_fwd, meanfield, meanfield_bwd, meanfield_fwd

KW = dict(n_iter=4, theta_alpha=6.0, theta_beta=30.0, theta_gamma=2.0)


def masked(rng, shape, n_masked=9):
    """Random logits with ``n_masked`` entries at -inf (never every label of a pixel), and the finite stand-in."""
    logits = rng.normal(0, 2, size=shape)
    flat = logits.reshape(-1, shape[-1])
    rows = rng.choice(flat.shape[0], size=n_masked, replace=False)
    flat[rows, rng.integers(0, shape[-1], size=n_masked)] = -np.inf
    return logits, np.where(np.isneginf(logits), -1e4, logits)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_labels", [2, 4])
def test_meanfield_treats_minus_inf_as_an_impossible_label(rng, dtype, n_labels):
    logits, stand_in = masked(rng, (7, 9, n_labels))
    image = rng.uniform(0, 255, size=(7, 9, 3))
    q = meanfield(logits.astype(dtype), image, **KW)
    assert np.isfinite(q).all()
    assert (q[np.isneginf(logits)] == 0).all()
    np.testing.assert_allclose(q, meanfield(stand_in.astype(dtype), image, **KW), atol=1e-6 if dtype == np.float32
                               else 1e-12)
    z, _ = meanfield_fwd(logits.astype(dtype), image, output="logits", keep_residuals=False, **KW)
    assert np.isneginf(z[np.isneginf(logits)]).all() and np.isfinite(z[~np.isneginf(logits)]).all()


def test_meanfield_gradients_stay_finite_and_match_the_stand_in(rng):
    logits, stand_in = masked(rng, (6, 8, 3))
    image = rng.uniform(0, 255, size=(6, 8, 3))
    grad = rng.normal(size=logits.shape)
    grads = [meanfield_bwd(meanfield_fwd(x, image, **KW)[1], grad) for x in (logits, stand_in)]
    for name in ("logits", "compat", "w_spatial", "w_bilateral", "theta_alpha", "theta_beta", "image"):
        got, ref = getattr(grads[0], name), getattr(grads[1], name)
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12, err_msg=name)
    assert (grads[0].logits[np.isneginf(logits)] == 0).all()


def test_crf_with_any_terms_takes_minus_inf(rng):
    logits, stand_in = masked(rng, (40, 3))
    feats = rng.normal(size=(40, 2))
    terms = [PairwiseTerm(feats, 2.0), PairwiseTerm(feats * 2, 1.0, None, "after"), PairwiseTerm(feats / 2, 0.5)]
    np.testing.assert_allclose(crf(logits, terms), crf(stand_in, terms), atol=1e-12)
    grad = rng.normal(size=logits.shape)
    got = crf_bwd(crf_fwd(logits, terms)[1], grad)
    ref = crf_bwd(crf_fwd(stand_in, terms)[1], grad)
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-12)
    assert np.isfinite(got.logits).all()
    for g, r in zip(got.terms, ref.terms):
        np.testing.assert_allclose(g.weight, r.weight, rtol=1e-9)


@pytest.mark.parametrize("bad, match", [(np.nan, "1 NaN"), (np.inf, r"1 \+inf")])
def test_nan_and_plus_inf_logits_stay_errors(rng, bad, match):
    logits = rng.normal(size=(20, 3))
    logits[4, 1] = bad
    with pytest.raises(ValueError, match=f"`logits` contains {match}"):
        crf(logits, [PairwiseTerm(rng.normal(size=(20, 2)), 1.0)])


needs = {m: importlib.util.find_spec(m) is None for m in ("tensorflow", "torch", "jax")}


@pytest.mark.skipif(needs["tensorflow"], reason="TensorFlow is not installed")
@pytest.mark.parametrize("backend", ["numba", "tf"])
def test_keras_layer_takes_a_masked_label_with_finite_gradients(rng, backend):
    import tensorflow as tf

    from crfcore.adapters.tf import CrfRnnLayer

    logits, stand_in = masked(rng, (2, 8, 10, 3), n_masked=12)
    image = rng.uniform(0, 255, size=(2, 8, 10, 3)).astype(np.float32)
    layer = CrfRnnLayer(theta_alpha=6.0, theta_beta=30.0, theta_gamma=2.0, num_iterations=3, num_classes=3,
                        backend=backend)
    weights = tf.constant(rng.normal(size=logits.shape), tf.float32)
    probs, grads = [], []
    for x in (logits, stand_in):
        x = tf.constant(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            p = tf.nn.softmax(layer([x, image]), axis=-1)
            loss = tf.reduce_sum(p * weights)
        probs.append(p.numpy())
        grads.append(tape.gradient(loss, x).numpy())
    assert np.isfinite(probs[0]).all() and np.isfinite(grads[0]).all()
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-5)
    everything = np.zeros((1, 8, 10, 3), np.float32)
    everything[0, 2, 3] = -np.inf
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="every label"):
        layer([everything, image[:1]])


@pytest.mark.skipif(needs["torch"], reason="PyTorch is not installed")
def test_torch_takes_a_masked_label_with_finite_gradients(rng):
    import torch

    from crfcore.adapters.torch import crf_refine

    logits, stand_in = masked(rng, (2, 8, 10, 3), n_masked=12)
    image = torch.tensor(rng.uniform(0, 255, size=(2, 3, 8, 10)))
    weights = torch.tensor(rng.normal(size=(2, 3, 8, 10)))
    probs, grads = [], []
    for x in (logits, stand_in):
        x = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
        p = torch.softmax(crf_refine(x, image, n_iter=3, theta_alpha=6.0, theta_beta=30.0, theta_gamma=2.0), 1)
        (p * weights).sum().backward()
        probs.append(p.detach().numpy())
        grads.append(x.grad.numpy())
    assert np.isfinite(probs[0]).all() and np.isfinite(grads[0]).all()
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-10)
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-10)


@pytest.mark.skipif(needs["jax"], reason="JAX is not installed")
def test_jax_takes_a_masked_label_with_finite_gradients(rng):
    import jax
    import jax.numpy as jnp

    from crfcore.adapters.jax import crf_refine

    logits, stand_in = masked(rng, (2, 8, 10, 3), n_masked=12)
    image = jnp.asarray(rng.uniform(0, 255, size=(2, 8, 10, 3)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)

    def loss(x):
        p = jax.nn.softmax(crf_refine(x, image, n_iter=3, theta_alpha=6.0, theta_beta=30.0, theta_gamma=2.0), -1)
        return jnp.sum(p * weights), p

    (_, p0), g0 = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(logits, jnp.float32))
    (_, p1), g1 = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(stand_in, jnp.float32))
    assert np.isfinite(np.asarray(p0)).all() and np.isfinite(np.asarray(g0)).all()
    np.testing.assert_allclose(p0, p1, atol=1e-5)
    np.testing.assert_allclose(g0, g1, atol=1e-5)
    everything = np.zeros((1, 8, 10, 3), np.float32)
    everything[0, 2, 3] = -np.inf
    with pytest.raises(ValueError, match="every label impossible"):
        crf_refine(everything, image[:1])

