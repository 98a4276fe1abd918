import numpy as np
import pytest

import crfcore
from crfcore import Lattice, meanfield, meanfield_fwd
from naive import dense_meanfield, dense_operator, gaussian_matrix, pixel_features, softmax

try:
    from pydensecrf import densecrf as dcrf
except ImportError:  # optional oracle
    dcrf = None

NORMS = ["symmetric", "after", "before", "none"]


def blob_image(rng, h, w):
    """A two-region RGB image with noise, and noisy logits that roughly follow the regions."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2 < 1
    img = np.where(inside[..., None], [200, 60, 40], [30, 90, 180]) + rng.normal(0, 12, size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, inside


def noisy_logits(rng, inside, n_labels, noise=1.5):
    logits = rng.normal(0, noise, size=inside.shape + (n_labels,))
    logits[..., 1] += 1.0 * inside
    logits[..., 0] += 1.0 * ~inside
    return logits


def densecrf_reference(logits, img, *, n_iter, w_spatial, w_bilateral, theta_alpha, theta_beta, theta_gamma,
                       normalization):
    h, w, n_lab = logits.shape
    kinds = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER,
             "before": dcrf.NORMALIZE_BEFORE, "none": dcrf.NO_NORMALIZATION}
    d = dcrf.DenseCRF2D(w, h, n_lab)
    d.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(-1, n_lab).T, dtype=np.float32))
    d.addPairwiseGaussian(sxy=theta_gamma, compat=w_spatial, normalization=kinds[normalization])
    d.addPairwiseBilateral(sxy=theta_alpha, srgb=theta_beta, rgbim=np.ascontiguousarray(img),
                           compat=w_bilateral, normalization=kinds[normalization])
    return np.array(d.inference(n_iter)).T.reshape(h, w, n_lab)


@pytest.mark.skipif(dcrf is None, reason="pydensecrf2 is not installed (pip install pydensecrf2)")
@pytest.mark.parametrize(
    "shape, n_labels, norm",
    [((64, 64), 2, "symmetric"), ((48, 80), 3, "after"), ((100, 70), 5, "before"), ((240, 320), 2, "symmetric"),
     ((240, 320), 4, "after"), ((64, 64), 3, "none")],
)
def test_matches_pydensecrf(rng, shape, n_labels, norm):
    img, inside = blob_image(rng, *shape)
    logits = noisy_logits(rng, inside, n_labels).astype(np.float32)
    w = (3.0, 10.0) if norm != "none" else (0.01, 0.02)  # unnormalised kernels sum to hundreds
    kw = dict(n_iter=5, w_spatial=w[0], w_bilateral=w[1], theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0,
              normalization=norm)
    ours = meanfield(logits, img, **kw)
    ref = densecrf_reference(logits, img, **kw)
    assert np.abs(ours - ref).max() <= 1e-4


def test_matches_dense_meanfield_with_the_lattice_operator(rng):
    # Same kernel matrices (read off the lattice), an independent dense mean field: equal to float64 rounding.
    h, w, n_lab = 9, 11, 3
    img, inside = blob_image(rng, h, w)
    logits = noisy_logits(rng, inside, n_lab)
    fb, fs = pixel_features(img, 5.0, 20.0, 2.0)
    # float64 mean field keeps float64 barycentric weights: read the operators off lattices that do too
    kb, ks = (dense_operator(Lattice(f, dtype=np.float64), h * w) for f in (fb, fs))
    mu = rng.normal(size=(n_lab, n_lab))
    ws = rng.normal(size=(n_lab, n_lab))
    for norm in NORMS:
        q_ref, z_ref = dense_meanfield(logits.reshape(-1, n_lab), ks, kb, n_iter=4, w_spatial=ws, w_bilateral=2.5,
                                       compat=mu, normalization=norm)
        kw = dict(n_iter=4, theta_alpha=5.0, theta_beta=20.0, theta_gamma=2.0, w_spatial=ws, w_bilateral=2.5,
                  compat=mu, normalization=norm)
        q = meanfield(logits, img, **kw)
        z, _ = meanfield_fwd(logits, img, output="logits", **kw)
        np.testing.assert_allclose(q.reshape(-1, n_lab), q_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(z.reshape(-1, n_lab), z_ref, rtol=1e-10, atol=1e-10)


def test_fixed_point_close_to_exact_gaussian_crf(rng):
    # With the exact Gaussian kernels instead of the lattice's approximation, mean field settles on the same
    # labelling: the lattice's few-percent kernel error shifts Q only slightly.
    h, w = 24, 24
    img, inside = blob_image(rng, h, w)
    logits = noisy_logits(rng, inside, 2, noise=2.0)
    fb, fs = pixel_features(img, 10.0, 30.0, 3.0)
    q_ref, _ = dense_meanfield(logits.reshape(-1, 2), gaussian_matrix(fs), gaussian_matrix(fb), n_iter=20,
                               w_spatial=3.0, w_bilateral=5.0, compat=1 - np.eye(2), normalization="symmetric")
    q = meanfield(logits, img, n_iter=20, theta_alpha=10.0, theta_beta=30.0, theta_gamma=3.0, w_spatial=3.0,
                  w_bilateral=5.0).reshape(-1, 2)
    assert np.mean(q.argmax(1) == q_ref.argmax(1)) >= 0.99
    assert np.abs(q - q_ref).mean() < 0.02
    # and the CRF does its job: it cleans up the noisy unaries
    assert np.mean(q.argmax(1) == inside.ravel()) > np.mean(logits.reshape(-1, 2).argmax(1) == inside.ravel())


@pytest.mark.parametrize("norm", NORMS)
def test_outputs_are_probabilities(rng, norm):
    img, inside = blob_image(rng, 30, 40)
    q = meanfield(noisy_logits(rng, inside, 4) * 10, img, n_iter=3, normalization=norm)
    assert np.all(q >= 0) and np.all(q <= 1)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n_labels", [2, 3, 21])
def test_zero_iterations_is_softmax(rng, n_labels):
    logits = rng.normal(size=(5, 6, n_labels))
    logits[0, 0] = 1e300  # huge but finite: the softmax's zero messages (0 * logits) must not make it NaN
    img = rng.uniform(size=(5, 6, 1))
    np.testing.assert_allclose(meanfield(logits, img, n_iter=0), softmax(logits), rtol=1e-12, atol=1e-300)
    z, _ = meanfield_fwd(logits, img, n_iter=0, output="logits")
    np.testing.assert_array_equal(z, logits)


@pytest.mark.parametrize("dtype, out", [(np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32)])
def test_dtype_follows_logits(rng, dtype, out):
    img, inside = blob_image(rng, 12, 10)
    logits = noisy_logits(rng, inside, 2).astype(dtype)
    q = meanfield(logits, img)
    assert q.dtype == out
    ref = meanfield(logits.astype(np.float64), img)
    np.testing.assert_allclose(q, ref, atol=1e-5)


def test_batch_equals_single_calls(rng):
    imgs, logits = zip(*[(lambda im_in: (im_in[0], noisy_logits(rng, im_in[1], 3)))(blob_image(rng, 16, 20))
                         for _ in range(4)])
    imgs, logits = np.stack(imgs), np.stack(logits)
    batch = meanfield(logits.reshape(2, 2, 16, 20, 3), imgs.reshape(2, 2, 16, 20, 3))
    single = np.stack([meanfield(lg, im) for lg, im in zip(logits, imgs)])
    np.testing.assert_array_equal(batch.reshape(single.shape), single)


def test_volumes_and_multispectral_and_grey(rng):
    vol = rng.uniform(size=(6, 7, 8, 5))  # 3-D, 5 channels
    logits = rng.normal(size=(6, 7, 8, 3))
    q = meanfield(logits, vol, spatial_dims=3, theta_beta=0.3)
    assert q.shape == logits.shape
    np.testing.assert_allclose(q.sum(-1), 1.0)
    # volume against the dense oracle (positions x, y, z: last axis first)
    zz, yy, xx = np.mgrid[0:6, 0:7, 0:8]
    pos = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1).astype(float)
    fb = np.hstack([pos / 80.0, vol.reshape(-1, 5) / 0.3])
    kb, ks = (dense_operator(Lattice(f, dtype=np.float64), 336) for f in (fb, pos / 3.0))
    q_ref, _ = dense_meanfield(logits.reshape(-1, 3), ks, kb, n_iter=5, w_spatial=3.0, w_bilateral=10.0,
                               compat=1 - np.eye(3), normalization="symmetric")
    np.testing.assert_allclose(q.reshape(-1, 3), q_ref, atol=1e-12)
    # a grey image may come without its channel axis
    grey = rng.integers(0, 255, size=(10, 12), dtype=np.uint8)
    lg = rng.normal(size=(10, 12, 2))
    np.testing.assert_array_equal(meanfield(lg, grey), meanfield(lg, grey[..., None]))


def test_noncontiguous_and_readonly_inputs(rng):
    img, inside = blob_image(rng, 20, 30)
    logits = noisy_logits(rng, inside, 3)
    ref = meanfield(logits, img)
    lg = np.asfortranarray(logits)
    lg.setflags(write=False)
    im = np.repeat(img, 2, axis=1)[:, ::2]
    assert not im.flags.c_contiguous
    np.testing.assert_array_equal(meanfield(lg, im), ref)
    assert logits.flags.writeable  # inputs untouched


def test_matrix_compat_and_weights_equal_scalar_potts(rng):
    img, inside = blob_image(rng, 14, 15)
    logits = noisy_logits(rng, inside, 3)
    q1 = meanfield(logits, img, w_spatial=3.0, w_bilateral=10.0)
    q2 = meanfield(logits, img, w_spatial=3.0 * np.eye(3), w_bilateral=10.0 * np.eye(3), compat=crfcore.potts(3))
    np.testing.assert_allclose(q1, q2, atol=1e-12)


def test_saturated_logits_give_clean_probabilities_and_gradients(rng):
    # logit gaps of hundreds make exp underflow to subnormals: flushed to exact zeros, never NaN
    img, inside = blob_image(rng, 12, 14)
    logits = np.where(inside[..., None], [0.0, 300.0], [300.0, 0.0]).astype(np.float32)
    out, res = meanfield_fwd(logits, img, n_iter=3)
    assert np.isfinite(out).all() and set(np.unique(out)) <= {0.0, 1.0}
    tiny = np.finfo(np.float32).tiny
    q_in = np.stack([r.q_in for r in res.per_image])
    assert not np.any((np.abs(q_in) > 0) & (np.abs(q_in) < tiny))
    grads = crfcore.meanfield_bwd(res, rng.normal(size=out.shape))
    assert np.isfinite(grads.logits).all() and np.isfinite(grads.compat).all()


@pytest.mark.parametrize("n_labels", [2, 5])
@pytest.mark.parametrize("potts_compat", [True, False])
def test_inference_path_equals_training_path(rng, n_labels, potts_compat):
    # inference adds both kernels' messages into one array (scalar weights); training keeps them apart
    image = rng.integers(0, 256, size=(24, 30, 3)).astype(np.uint8)
    logits = rng.normal(scale=2.0, size=(24, 30, n_labels))
    compat = None if potts_compat else rng.uniform(0.2, 1.5, size=(n_labels, n_labels))
    kw = dict(n_iter=4, theta_alpha=10.0, theta_beta=20.0, w_spatial=2.5, w_bilateral=4.0, compat=compat)
    q_infer = meanfield(logits, image, **kw)
    q_train, res = meanfield_fwd(logits, image, keep_residuals=True, **kw)
    assert res is not None
    np.testing.assert_allclose(q_infer, q_train, rtol=1e-12, atol=1e-12)
    z_infer = meanfield_fwd(logits, image, keep_residuals=False, output="logits", **kw)[0]
    z_train = meanfield_fwd(logits, image, keep_residuals=True, output="logits", **kw)[0]
    np.testing.assert_allclose(z_infer, z_train, rtol=1e-11, atol=1e-11)


def test_the_residual_store_counts_what_residuals_hold(rng):
    """The adapters' residual store is bounded in bytes: it counts the iterates, the terms' features and the lattices
    of every image of a meanfield forward (nested per image), which must come to at least the iterates' own size."""
    from crfcore.adapters._residuals import residual_bytes

    logits = rng.normal(size=(2, 20, 24, 3)).astype(np.float32)
    image = rng.integers(0, 255, size=(2, 20, 24, 3), dtype=np.uint8)
    _, res = crfcore.meanfield_fwd(logits, image, n_iter=4)
    iterates = 2 * 4 * (1 + 2) * 20 * 24 * 3 * 4  # per image and iteration: Q_{t-1} and one message per term
    features = 20 * 24 * (2 + 2 * 5) * 8  # the images share their spatial term's features (and kernel)
    lattices = {id(k.lattice): k.lattice for r in res.per_image for k in r.model.kernels}
    assert len(lattices) == 3
    lattices = sum(lat.nbytes for lat in lattices.values())
    assert residual_bytes(res) >= iterates + features + lattices
    assert residual_bytes(res) < 2 * (iterates + features + lattices)


def test_the_spatial_kernel_kept_between_calls_gives_the_same_results(rng):
    """The spatial term's kernel depends on the image's shape and theta_gamma alone and is kept between calls: a
    call served from it equals one that built it, bit for bit, and another shape, width or normalisation gets its
    own."""
    from crfcore import inference

    logits = rng.normal(size=(2, 18, 22, 3)).astype(np.float32)
    image = rng.integers(0, 255, size=(2, 18, 22, 3), dtype=np.uint8)
    other_logits, other_image = logits[:, :15], image[:, :15]
    cases = [dict(), dict(theta_gamma=5.0), dict(theta_gamma=(3.0, 4.0)), dict(normalization="after")]
    inference._spatial_cache.clear()
    cold = [meanfield(lg, im, **kw) for kw in cases for lg, im in ((logits, image), (other_logits, other_image))]
    assert len(inference._spatial_cache) == inference._SPATIAL_CACHE_ENTRIES == 4  # the newest four
    warm = [meanfield(lg, im, **kw) for kw in cases for lg, im in ((logits, image), (other_logits, other_image))]
    for a, b in zip(cold, warm):
        np.testing.assert_array_equal(a, b)
    for i, kw in enumerate(cases):  # each case's result is its own, not another's kernel
        inference._spatial_cache.clear()
        np.testing.assert_array_equal(meanfield(other_logits, other_image, **kw), cold[2 * i + 1])
    assert not np.array_equal(cold[0], cold[2])


def test_the_kept_spatial_kernel_keeps_no_scratch_buffers(rng):
    """A forward and a backward leave the kept spatial kernel without their scratch buffers (which are sized for
    the bilateral lattice and the labels: megabytes at 256x256 and 21 labels)."""
    from crfcore import inference

    logits = rng.normal(size=(16, 20, 5)).astype(np.float32)
    image = rng.integers(0, 255, size=(16, 20, 3), dtype=np.uint8)
    out, res = meanfield_fwd(logits, image)
    kernel = res.per_image[0].model.kernels[0]  # the image's twin of the kept kernel, with its own scratch
    kept = [k for _, k in inference._spatial_cache.values() if k.lattice is kernel.lattice]
    assert len(kept) == 1 and kept[0] is not kernel
    assert kernel._work is None and kept[0]._work is None
    crfcore.meanfield_bwd(res, np.ones_like(out))
    assert kernel._work is None and kept[0]._work is None
