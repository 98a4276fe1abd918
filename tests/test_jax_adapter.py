"""crfcore.adapters.jax: crf_refine under jit, grad and vmap, with the core's exact backward."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import crfcore  # noqa: E402
from crfcore.adapters import jax as adapter  # noqa: E402
from crfcore.adapters.jax import crf_refine  # noqa: E402

WIDTHS = dict(theta_alpha=5.37, theta_beta=41.3, theta_gamma=1.73)  # off the pixel grid's simplex boundaries


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, params=["callback", "ffi"])
def call(request, monkeypatch):
    """Every test through both calls out of XLA: jax.pure_callback and the XLA FFI handlers (on the CPU here; on a
    GPU the FFI handlers run crfcore's CUDA backend on XLA's buffers)."""
    monkeypatch.setenv(adapter.CALL_ENV, request.param)
    return request.param


def test_the_call_is_the_one_asked_for(rng, call):
    logits, image, _ = data(rng, b=1, shape=(4, 5))
    grad = jax.grad(lambda x: crf_refine(x, image, n_iter=1).sum())
    names = {e.primitive.name for e in jax.make_jaxpr(grad)(logits).eqns}
    assert ("ffi_call" if call == "ffi" else "pure_callback") in names


def data(rng, b=2, shape=(8, 10), n_lab=3):
    truth = rng.uniform(size=(b, *shape)) > 0.5
    logits = rng.normal(size=(b, *shape, n_lab)) + 2.0 * truth[..., None]
    return logits, rng.uniform(0, 255, size=(b, *shape, 3)), truth


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_the_core_and_keeps_the_dtype(rng, dtype):
    logits, image, _ = data(rng)
    out = crf_refine(logits.astype(dtype), image, n_iter=3, **WIDTHS)
    assert out.dtype == dtype and out.shape == logits.shape
    ref, _ = crfcore.meanfield_fwd(logits.astype(dtype), image.astype(dtype), n_iter=3, output="logits", **WIDTHS)
    # the adapter hands the core its compatibility as a matrix (and keeps no residuals without a gradient): the
    # same model computed in another order, equal to the precision of the dtype (float32 softmaxes are float32
    # throughout: both are within ~3e-6 of the float64 result at these logits of up to ~12)
    tol = 2e-5 if dtype == np.float32 else 1e-6
    np.testing.assert_allclose(np.asarray(out), ref, rtol=tol, atol=tol)


def test_check_grads_for_every_argument(rng):
    logits, image, _ = data(rng, b=1, shape=(6, 7))

    def f(lg, img, ta, tb, ws, wb, mu):
        return crf_refine(lg, img, n_iter=3, theta_alpha=ta, theta_beta=tb, theta_gamma=1.73, w_spatial=ws,
                          w_bilateral=wb, compat=mu, normalization="after")

    args = (logits, image, 5.37, 41.3, rng.normal(size=(3, 3)), 2.5, rng.normal(size=(3, 3)))
    check_grads(f, args, order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-5)


ARGS = ("logits", "image", "theta_alpha", "theta_beta", "theta_gamma", "w_bilateral", "w_spatial", "compat")


@pytest.mark.parametrize("name", ARGS)
def test_each_argument_alone_matches_finite_differences(rng, name):
    """Differentiated alone, every argument gets its gradient (theta_alpha alone once got 0: the features gradient
    ran only when the image or another width was differentiated)."""
    logits, image, _ = data(rng, b=1, shape=(6, 7))
    values = dict(logits=logits, image=image, theta_alpha=7.37, theta_beta=41.3, theta_gamma=1.73, w_bilateral=2.5,
                  w_spatial=rng.normal(size=(3, 3)), compat=rng.normal(size=(3, 3)))
    direction = rng.normal(size=np.shape(values[name]))

    def loss(x):
        kw = dict(values, **{name: x})
        lg, img = kw.pop("logits"), kw.pop("image")
        return jax.nn.logsumexp(crf_refine(lg, img, n_iter=2, normalization="after", **kw), -1).mean()

    g = np.asarray(jax.grad(loss)(jnp.asarray(values[name], jnp.float64)))
    eps = 1e-6
    x = np.asarray(values[name], np.float64)
    fd = (float(loss(x + eps * direction)) - float(loss(x - eps * direction))) / (2 * eps)
    assert abs(np.sum(g * direction)) > 1e-8, (name, g)
    np.testing.assert_allclose(np.sum(g * direction), fd, rtol=1e-4, atol=1e-9)


def test_jit_vmap_and_grad_agree(rng):
    logits, image, _ = data(rng, b=4)

    def loss(lg, img, mu):
        return jnp.sum(crf_refine(lg, img, n_iter=3, compat=mu, **WIDTHS) ** 2)

    mu = 1.0 - np.eye(3)
    g = jax.grad(loss, argnums=(0, 2))(logits, image, mu)
    g_jit = jax.jit(jax.grad(loss, argnums=(0, 2)))(logits, image, mu)
    for a, b in zip(g, g_jit):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    per_image = jax.vmap(lambda lg, img: crf_refine(lg, img, n_iter=3, **WIDTHS))(logits, image)
    whole = crf_refine(logits, image, n_iter=3, **WIDTHS)
    np.testing.assert_allclose(np.asarray(per_image), np.asarray(whole), rtol=1e-12)
    g_vmap = jax.vmap(jax.grad(lambda lg, img: loss(lg, img, mu)))(logits, image)
    np.testing.assert_allclose(np.asarray(g_vmap), np.asarray(g[0]), rtol=1e-10)
    assert len(adapter._STORE) == 0  # every forward kept for a gradient was consumed


def test_plain_gradient_steps_train_the_matrices(rng):
    logits, image, truth = data(rng, b=4, shape=(12, 14), n_lab=2)
    logits = logits[..., :2] + rng.normal(0, 1.5, size=logits[..., :2].shape)
    labels = jax.nn.one_hot(truth.astype(int), 2)
    params = dict(w_spatial=3.0 * jnp.eye(2), w_bilateral=5.0 * jnp.eye(2), compat=1.0 - jnp.eye(2))

    @jax.jit
    def loss(p):
        z = crf_refine(logits, image, n_iter=3, theta_alpha=6.0, theta_beta=60.0, theta_gamma=2.0, **p)
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(z), -1))

    grad = jax.jit(jax.value_and_grad(loss))
    first = float(loss(params))
    for _ in range(15):
        value, g = grad(params)
        params = jax.tree_util.tree_map(lambda p, d: p - 0.2 * d, params, g)
    assert float(loss(params)) < 0.9 * first


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(theta_alpha=-2.0), ValueError, "`theta_alpha` must be a positive"),
    (dict(w_spatial=np.ones((2, 2))), ValueError, r"`w_spatial` must be a number or an \(3, 3\)"),
    (dict(compat=np.ones(3)), ValueError, r"`compat` must be None \(Potts\) or an \(3, 3\)"),
    (dict(normalization="sym"), ValueError, "`normalization`"),
    (dict(n_iter=-1), ValueError, "`n_iter`"),
])
def test_bad_arguments(rng, kwargs, exc, match):
    logits, image, _ = data(rng)
    with pytest.raises(exc, match=match):
        jax.block_until_ready(crf_refine(logits, image, **kwargs))


def test_bad_inputs(rng):
    logits, image, _ = data(rng)
    with pytest.raises(ValueError, match="all axes but the last must match"):
        crf_refine(logits, image[:, :5])
    with pytest.raises(ValueError, match="L >= 2"):
        crf_refine(logits[..., :1], image)
    with pytest.raises(TypeError, match="float array"):
        crf_refine(logits.astype(int), image)
    with pytest.raises(ValueError, match="`logits` contains"):
        jax.block_until_ready(crf_refine(logits * np.nan, image))


def test_per_axis_widths_equal_the_core(rng):
    logits, image, _ = data(rng)
    kw = dict(theta_alpha=(5.37, 6.21), theta_beta=(41.3, 30.7, 52.9), theta_gamma=(1.73, 2.11))
    out = crf_refine(logits, image, n_iter=3, **kw)
    ref, _ = crfcore.meanfield_fwd(logits, image, n_iter=3, output="logits", **kw)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10, atol=1e-10)
    g = jax.grad(lambda t: jnp.sum(crf_refine(logits, image, n_iter=2, theta_alpha=t) ** 2))(jnp.array([5.37, 6.21]))
    assert g.shape == (2,) and np.all(np.asarray(g) != 0)


def test_low_precision_is_computed_in_float32(rng):
    logits, image, _ = data(rng)
    for dtype in (jnp.bfloat16, jnp.float16):
        out = crf_refine(jnp.asarray(logits, dtype), image, n_iter=2, **WIDTHS)
        ref = crf_refine(jnp.asarray(logits, dtype).astype(jnp.float32), image, n_iter=2, **WIDTHS)
        assert out.dtype == dtype
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref.astype(dtype)))


def test_empty_batch_and_swapped_layouts(rng):
    logits, image, _ = data(rng, shape=(20, 24))
    out = crf_refine(logits[:0], image[:0], **WIDTHS)
    assert out.shape == (0, 20, 24, 3)
    first = np.moveaxis(logits, -1, 1), np.moveaxis(image, -1, 1)  # (B, C, H, W): 3 labels and RGB
    with pytest.raises(ValueError, match="look channels first"):
        crf_refine(*first)
    with pytest.raises(ValueError, match="look channels first"):
        crfcore.meanfield(*first)
    with pytest.raises(ValueError, match=r"`compat` must be None \(Potts\) or an \(3, 3\) matrix for 3 labels, "
                                         r"got a scalar"):
        crf_refine(logits, image, compat=1.0)
    with pytest.raises(ValueError, match=r"`compat` must be None \(Potts\) or an \(3, 3\) matrix for 3 labels, "
                                         r"got a scalar"):
        crfcore.meanfield(logits, image, compat=1.0)
    with pytest.raises(ValueError, match=r"`compat` must be None \(Potts\) or an \(3, 3\) matrix for 3 labels, "
                                         r"got shape \(3,\)"):
        crfcore.meanfield(logits, image, compat=np.ones(3))


def test_value_errors_under_jit_carry_the_core_message(rng):
    # Under jax.jit a width or a NaN is a tracer until the host callback runs, so no Python exception can be raised
    # at trace time; JAX wraps the core's ValueError in a JaxRuntimeError whose text ends with the core's message.
    logits, image, _ = data(rng)
    width = jax.jit(lambda t: crf_refine(logits, image, theta_alpha=t))
    with pytest.raises(Exception, match="`theta_alpha` must be a positive finite number, got -1.0"):
        jax.block_until_ready(width(-1.0))
    nan = jax.jit(lambda lg: crf_refine(lg, image))
    with pytest.raises(Exception, match="`logits` contains"):
        jax.block_until_ready(nan(logits * np.nan))
    assert np.isfinite(np.asarray(width(5.37))).all()  # the jitted function still works after an error


def test_auto_is_the_callback_on_the_cpu_and_a_bad_value_is_an_error(monkeypatch, rng):
    logits, image, _ = data(rng, b=1, shape=(4, 5))
    monkeypatch.setenv(adapter.CALL_ENV, "auto")
    grad = jax.grad(lambda x: crf_refine(x, image, n_iter=1).sum())
    names = {e.primitive.name for e in jax.make_jaxpr(grad)(logits).eqns}
    assert jax.default_backend() != "cpu" or "pure_callback" in names
    monkeypatch.setenv(adapter.CALL_ENV, "fast")
    with pytest.raises(ValueError, match="CRFCORE_JAX_CALL='fast' must be one of"):
        crf_refine(logits, image, n_iter=1)

