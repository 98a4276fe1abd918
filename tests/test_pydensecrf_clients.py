"""pydensecrf used as its clients use it, written from pydensecrf's public README and examples (in our words):
the import switched to ``crfcore.pydensecrf``, nothing else changed.

Where pydensecrf2 (the C++ densecrf) is installed its numbers and exception classes are the oracle; the other checks
use independent facts (an impossible label has probability 0, the same CRF written another way, a known label
filling a hole of unknown pixels).
"""

import warnings

import numpy as np
import pytest

import crfcore.pydensecrf.densecrf as dcrf
from crfcore.pydensecrf import errors, utils

try:
    import pydensecrf.densecrf as ref_dcrf
    import pydensecrf.utils as ref_utils
except ImportError:  # the C++ oracle did not build here
    ref_dcrf = ref_utils = None

needs_ref = pytest.mark.skipif(ref_dcrf is None, reason="pydensecrf2 (the C++ densecrf) is not installed")


def blobs(rng, h=24, w=32):
    """An RGB image of two coloured regions with noise, and its true labels."""
    truth = np.zeros((h, w), np.int64)
    truth[h // 4:, w // 3:] = 1
    img = np.where(truth[..., None] == 1, [40, 170, 60], [200, 50, 40]) + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


def saturated_probs(rng, truth, n_labels=2):
    """Sigmoid/softmax outputs as float32 inference returns them: confident pixels are exactly 0 and 1."""
    logits = np.where(truth == 1, 30.0, -30.0) + rng.normal(0, 4, truth.shape)
    logits[rng.random(truth.shape) < 0.1] *= -0.1  # some noise the CRF should clean
    fg = (1 / (1 + np.exp(-logits))).astype(np.float32)  # exactly 1.0 above ~16.7, exactly 0.0 below ~-88
    probs = np.stack([1 - fg, fg])
    assert (probs == 0).any(), "the test needs saturated probabilities"
    return probs


def run_script(module, img, unary, n_iter=5, compat=(3, 10)):
    h, w = img.shape[:2]
    d = module.DenseCRF2D(w, h, unary.shape[0])
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=compat[0])
    d.addPairwiseBilateral(sxy=20, srgb=13, rgbim=img, compat=compat[1])
    return np.array(d.inference(n_iter))


def test_saturated_probabilities_give_plus_inf_energies_that_mean_impossible(rng):
    img, truth = blobs(rng)
    probs = saturated_probs(rng, truth)
    with np.errstate(divide="ignore"):
        unary = -np.log(probs).reshape(2, -1)  # +inf where a probability is exactly 0
    assert np.isposinf(unary).any()
    q = run_script(dcrf, img, unary)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q.sum(axis=0), 1, atol=1e-5)
    assert (q[np.isposinf(unary)] == 0).all()
    np.testing.assert_allclose(q, run_script(dcrf, img, np.minimum(unary, 1e4)), atol=1e-6)
    if ref_dcrf is not None:
        np.testing.assert_allclose(q, run_script(ref_dcrf, img, unary), atol=1e-4)


@needs_ref
def test_the_issue_repro_matches_pydensecrf():
    u = np.array([[np.inf, .1, .3], [0, 2, 1]], np.float32)
    out = []
    for module in (dcrf, ref_dcrf):
        d = module.DenseCRF2D(3, 1, 2)
        d.setUnaryEnergy(u)
        d.addPairwiseGaussian(sxy=3, compat=3)
        out.append(np.array(d.inference(5)))
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    np.testing.assert_allclose(out[0], [[0, .872, .701], [1, .128, .299]], atol=1e-3)


@pytest.mark.parametrize("u, match", [
    (np.array([[np.inf, .1, .3], [np.inf, 2, 1]]), r"every label impossible .* the first at index \(0,\)"),
    (np.array([[-np.inf, .1, .3], [0, 2, 1]]), "`u` contains 1 -inf"),
    (np.array([[np.nan, .1, .3], [0, 2, 1]]), "`u` contains 1 NaN"),
])
def test_what_densecrf_turns_into_nan_is_a_clear_error(u, match):
    d = dcrf.DenseCRF2D(3, 1, 2)
    with pytest.raises(ValueError, match=match):
        d.setUnaryEnergy(u.astype(np.float32))
    with pytest.raises(ValueError, match=match):
        dcrf.ConstUnary(u)


def test_unary_from_labels_with_unknown_pixels_fills_the_hole(rng):
    """The README's annotation use: labels 1..n known, 0 unknown; the CRF labels the unknown hole from its
    surroundings (same colour as the region around it)."""
    img, truth = blobs(rng)
    labels = truth + 1
    labels[10:16, 16:24] = 0  # a hole of unknown pixels inside region 2
    labels[:, :2] = 0
    unary = utils.unary_from_labels(labels, 2, gt_prob=0.7, zero_unsure=True)
    q = run_script(dcrf, img, unary, n_iter=10)
    found = np.argmax(q, axis=0).reshape(truth.shape)
    assert (found[10:16, 16:24] == 1).all()
    assert (found == truth).mean() > 0.99
    if ref_utils is not None:
        np.testing.assert_allclose(unary, ref_utils.unary_from_labels(labels, 2, gt_prob=0.7), rtol=1e-6)
        np.testing.assert_allclose(q, run_script(ref_dcrf, img, unary, n_iter=10), atol=1e-4)


def volume_crf(module, vol, unary):
    """A 3-D CT-style client: the generic DenseCRF with hand-made features from utils."""
    n_labels = unary.shape[0]
    d = module.DenseCRF(vol.size, n_labels)
    d.setUnaryEnergy(unary)
    d.addPairwiseEnergy(utils.create_pairwise_gaussian(sdims=(1.0, 2.0, 2.0), shape=vol.shape), compat=3)
    d.addPairwiseEnergy(utils.create_pairwise_bilateral(sdims=(2.0, 4.0, 4.0), schan=(20.0,), img=vol, chdim=-1),
                        compat=5, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    return d


def test_generic_densecrf_with_hand_made_3d_features(rng):
    vol = np.zeros((6, 10, 12), np.float32)
    vol[2:5, 3:8, 4:10] = 100
    vol += rng.normal(0, 5, vol.shape).astype(np.float32)
    truth = (vol > 50).astype(np.int64)
    probs = np.clip(np.stack([1 - truth, truth]) * 0.7 + 0.15 + rng.normal(0, 0.2, (2,) + vol.shape), 0.01, 1)
    probs = (probs / probs.sum(axis=0)).reshape(2, -1)
    unary = utils.unary_from_softmax(probs)
    d = volume_crf(dcrf, vol, unary)
    q = np.array(d.inference(5))
    assert (np.argmax(q, axis=0) == truth.ravel()).mean() > (np.argmax(probs, axis=0) == truth.ravel()).mean()
    # the same CRF through crfcore's own API, features (N, d) (pydensecrf's are (d, N), in float32)
    feats = [utils.create_pairwise_gaussian((1.0, 2.0, 2.0), vol.shape).T.astype(np.float64),
             utils.create_pairwise_bilateral((2.0, 4.0, 4.0), (20.0,), vol, chdim=-1).T.astype(np.float64)]
    import crfcore

    terms = [crfcore.PairwiseTerm(feats[0], 3.0), crfcore.PairwiseTerm(feats[1], 5.0)]
    np.testing.assert_allclose(q.T, crfcore.crf(-unary.T.astype(np.float64), terms), atol=1e-4)
    if ref_dcrf is not None:
        np.testing.assert_allclose(q, np.array(volume_crf(ref_dcrf, vol, unary).inference(5)), atol=1e-4)


def test_step_wise_loop_tmp_arrays_and_kl(rng):
    """startInference + stepInference + klDivergence, as a client that watches convergence writes it."""
    img, truth = blobs(rng, 16, 20)
    probs = rng.dirichlet(np.ones(3), size=img.shape[:2]).transpose(2, 0, 1).astype(np.float32)
    unary = utils.unary_from_softmax(probs)
    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, 3)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=10, srgb=13, rgbim=img, compat=np.array([1.0, 2.0, 3.0]))  # diagonal: not Potts
    d.addPairwiseEnergy(utils.create_pairwise_gaussian((5, 5), (h, w)), compat=2)
    q, tmp1, tmp2 = d.startInference()
    kls = [d.klDivergence(q)]
    for _ in range(6):
        before = q.copy()
        d.stepInference(q, tmp1, tmp2)
        kls.append(d.klDivergence(q))
        # tmp1: densecrf's energies -U - sum_k pairwise_k(Q); the new Q is their softmax
        e = np.exp(tmp1 - tmp1.max(axis=0))
        np.testing.assert_allclose(q, e / e.sum(axis=0), atol=1e-6)
        # tmp1 and tmp2 (the last term's energy, Potts(2): -2 K Q) in densecrf's own form, from the messages
        np.testing.assert_allclose(tmp1, -unary - sum(pairwise(d, before)), atol=1e-4)
        np.testing.assert_allclose(tmp2, pairwise(d, before)[-1], atol=1e-5)
    np.testing.assert_allclose(q, d.inference(6), atol=1e-6)
    assert kls[-1] < kls[0]
    if ref_dcrf is not None:
        r = ref_dcrf.DenseCRF2D(w, h, 3)
        r.setUnaryEnergy(np.ascontiguousarray(unary))  # pydensecrf takes C-contiguous float32 only
        r.addPairwiseGaussian(sxy=3, compat=3)
        r.addPairwiseBilateral(sxy=10, srgb=13, rgbim=img, compat=np.array([1.0, 2.0, 3.0], np.float32))
        r.addPairwiseEnergy(utils.create_pairwise_gaussian((5, 5), (h, w)), compat=2)
        rq, r1, r2 = r.startInference()
        ref_kls = [r.klDivergence(rq)]
        for _ in range(6):
            r.stepInference(rq, r1, r2)
            ref_kls.append(r.klDivergence(rq))
        np.testing.assert_allclose(q, np.array(rq), atol=1e-4)
        np.testing.assert_allclose(kls, ref_kls, rtol=1e-4)


def pairwise(d, q):
    """Each term's densecrf energy ``(K_k Q) M_k^T`` ``(L, N)``, from the engine's messages ``K_k Q`` (public
    ``CrfModel.messages``) and densecrf's compatibility: Potts ``-w I``, a vector ``diag(v)``."""
    msgs = d._crf().messages(np.ascontiguousarray(q.T))
    return [(m.astype(np.float64) @ p.energy_matrix(d._nlabel).T).T for m, p in zip(msgs, d._pairwise)]


def test_non_contiguous_fortran_and_read_only_inputs_give_the_same_result(rng):
    img, truth = blobs(rng)
    probs = rng.dirichlet(np.ones(3), size=img.shape[:2]).transpose(2, 0, 1)
    unary = utils.unary_from_softmax(probs)
    ref = run_script(dcrf, img, unary)
    odd_unary = np.asfortranarray(unary.astype(np.float64))
    odd_unary.setflags(write=False)
    odd_img = np.ascontiguousarray(img[:, ::-1])[:, ::-1]  # negative strides
    assert not odd_img.flags.c_contiguous
    np.testing.assert_array_equal(run_script(dcrf, odd_img, odd_unary), ref)
    feats = utils.create_pairwise_gaussian((3, 3), img.shape[:2])
    out = []
    for f in (feats, np.asfortranarray(feats), np.repeat(feats, 2, axis=0)[::2]):  # contiguous, Fortran, strided
        d = dcrf.DenseCRF(img.shape[0] * img.shape[1], 3)
        d.setUnaryEnergy(unary[:, ::-1][:, ::-1])
        d.addPairwiseEnergy(f, compat=3)
        out.append(np.array(d.inference(3)))
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])


def test_what_pydensecrf_accepts_is_accepted(rng):
    img, _ = blobs(rng, 8, 12)
    unary = utils.unary_from_softmax(rng.dirichlet(np.ones(3), size=(8, 12)).transpose(2, 0, 1))

    def run(w, h, n, sxy, srgb, niter):
        d = dcrf.DenseCRF2D(w, h, n)
        d.setUnaryEnergy(unary)
        d.addPairwiseGaussian(sxy=sxy, compat=np.int64(3))
        d.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=img, compat=np.float32(5))
        return np.array(d.inference(niter))

    base = run(12, 8, 3, (3, 3), (13, 13, 13), 4)
    np.testing.assert_array_equal(run(12.0, 8.0, 3.0, 3.0, 13.0, 4.0), base)  # integral floats
    np.testing.assert_array_equal(run(np.int64(12), np.uint16(8), np.int32(3), np.float32(3), np.float64(13),
                                      np.int64(4)), base)  # NumPy scalars
    np.testing.assert_array_equal(run(12, 8, 3, (3, 3, 99), (13, 13, 13, 99), 4), base)  # pydensecrf reads the head
    np.testing.assert_array_equal(dcrf.DenseCRF(96.0, 3).inference(n_iterations=2.0), np.full((3, 96), 1 / 3,
                                                                                               np.float32))


def test_one_label_is_certain_everywhere():
    d = dcrf.DenseCRF2D(4, 3, 1)
    d.setUnaryEnergy(np.ones((1, 12), np.float32))
    d.addPairwiseGaussian(sxy=3, compat=3)
    np.testing.assert_array_equal(d.inference(5), np.ones((1, 12), np.float32))


def test_pydensecrf_partial_widths_are_taken_as_pydensecrf_takes_them(rng):
    img = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    with pytest.warns(UserWarning, match="only the first 1 are scaled"):
        feats = utils.create_pairwise_bilateral((3, 3), (13,), img, chdim=2)
    full = utils.create_pairwise_bilateral((3, 3), (13, 1, 1), img, chdim=2)
    np.testing.assert_array_equal(feats, full)
    with pytest.warns(UserWarning, match=r"gives \(1, 240\) features"):
        assert utils.create_pairwise_gaussian((3,), (10, 12)).shape == (1, 240)
    if ref_utils is not None:
        np.testing.assert_array_equal(feats, ref_utils.create_pairwise_bilateral((3, 3), (13,), img, chdim=2))
        assert ref_utils.create_pairwise_gaussian((3,), (10, 12)).shape == (1, 240)


# (call on a module, the exception class pydensecrf raises, the class crfcore raises)
CALLS = [
    (lambda m, u: m.DenseCRF2D(4, 3, 2).addPairwiseBilateral(3, 13, np.zeros((3, 4, 3), np.float32), 5),
     ValueError, errors.ArgumentTypeError),
    (lambda m, u: u.unary_from_labels(np.array([0.0, 1.0, 2.0]), 2, 0.7), IndexError, errors.LabelTypeError),
    (lambda m, u: u.unary_from_labels(np.array([0, 1, 255]), 2, 0.7), IndexError, errors.LabelRangeError),
    (lambda m, u: u.unary_from_labels(np.array([0, 1, 3]), 2, 0.7), IndexError, errors.LabelRangeError),
    (lambda m, u: u.unary_from_labels(np.array([0, 1]), 2, 0.7, zero_unsure=False), None, None),
    (lambda m, u: u.unary_from_labels(np.array([0, 2]), 2, 0.7, zero_unsure=False), IndexError,
     errors.LabelRangeError),
    (lambda m, u: u.unary_from_labels(np.array([0, 1, 2]), 2, 1.0), AssertionError, errors.RangeError),
    (lambda m, u: u.unary_from_labels(np.array([0, 1, 1]), 1, 0.7), ZeroDivisionError, errors.LabelCountError),
    (lambda m, u: u.unary_from_softmax(np.full((2, 3), 0.5), scale=0), AssertionError, errors.RangeError),
    (lambda m, u: m.DenseCRF2D(4, 3, 2).addPairwiseGaussian(sxy=(3,), compat=3), IndexError, errors.LengthError),
    (lambda m, u: u.create_pairwise_gaussian((3, 3, 3), (10, 10)), IndexError, errors.LengthError),
    (lambda m, u: m.DenseCRF2D(3, 1, 2).inference("5"), TypeError, errors.ArgumentTypeError),
]


@pytest.mark.parametrize("call, theirs, ours", CALLS)
def test_clients_except_clauses_still_catch_our_errors(call, theirs, ours):
    if theirs is None:  # a call both accept
        call(dcrf, utils)
        return
    with pytest.raises(ours) as info:
        call(dcrf, utils)
    assert isinstance(info.value, theirs) and ("`" in str(info.value))  # pydensecrf's class, and a named argument
    if ref_dcrf is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(theirs):
                call(ref_dcrf, ref_utils)
