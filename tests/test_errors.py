"""Every bad input to meanfield gets a clear TypeError/ValueError that names the argument."""

import warnings

import numpy as np
import pytest

from crfcore import meanfield, meanfield_fwd
from crfcore.lattice import LatticeRangeError

LOGITS = np.zeros((6, 7, 3))
IMAGE = np.zeros((6, 7, 3), dtype=np.uint8)


NO_LABEL_LEFT = np.where(np.arange(6 * 7)[:, None] == 2 * 7 + 3, -np.inf, np.zeros((6 * 7, 3))).reshape(6, 7, 3)


def with_nan(a, value=np.nan):
    a = a.astype(np.float64)
    a.flat[5] = value
    return a


@pytest.mark.parametrize(
    "logits, image, kwargs, exc, match",
    [
        (with_nan(LOGITS), IMAGE, {}, ValueError, "`logits` contains 1 NaN"),
        (with_nan(LOGITS, np.inf), IMAGE, {}, ValueError, r"`logits` contains 1 \+inf value"),
        (NO_LABEL_LEFT, IMAGE, {}, ValueError, r"every label impossible .* at 1 point\(s\), the first at index \(2, 3\)"),
        (LOGITS, with_nan(IMAGE), {}, ValueError, "`image` contains"),
        (LOGITS, with_nan(IMAGE, -np.inf), {}, ValueError, "`image` contains"),
        (LOGITS, np.zeros((6, 8, 3)), {}, ValueError, r"`image` has shape \(6, 8, 3\) but `logits` has shape"),
        (np.zeros((2, 6, 7, 3)), np.zeros((3, 6, 7, 3)), {}, ValueError, "batch and spatial"),
        (np.zeros((6, 7, 1)), IMAGE, {}, ValueError, "L >= 2"),
        (np.zeros((0, 7, 3)), np.zeros((0, 7, 3)), {}, ValueError, "`logits` is empty"),
        (LOGITS, np.zeros((6, 7, 0)), {}, ValueError, "`image` is empty"),
        (np.zeros((7, 3)), np.zeros((7, 3)), {}, ValueError, "2 spatial axes"),
        (LOGITS, IMAGE, {"theta_alpha": 0.0}, ValueError, "`theta_alpha` must be a positive"),
        (LOGITS, IMAGE, {"theta_beta": -1}, ValueError, "`theta_beta` must be a positive"),
        (LOGITS, IMAGE, {"theta_gamma": np.nan}, ValueError, "`theta_gamma` must be a positive"),
        (LOGITS, IMAGE, {"theta_gamma": "3"}, TypeError, "`theta_gamma` must be a positive real"),
        (LOGITS, IMAGE, {"theta_alpha": np.ones(3)}, ValueError, r"`theta_alpha` must be a scalar or have one value "
                                                                  r"per spatial axis \(2\)"),
        (LOGITS, IMAGE, {"theta_beta": [13.0, 13.0]}, ValueError, r"one value per image channel \(3\)"),
        (LOGITS, IMAGE, {"theta_gamma": [3.0, 0.0]}, ValueError, r"`theta_gamma` must be positive and finite"),
        (LOGITS, IMAGE, {"theta_gamma": [3.0, "a"]}, TypeError, r"`theta_gamma` must be a positive real number or"),
        (LOGITS, IMAGE, {"n_iter": -1}, ValueError, "`n_iter` must be an int >= 0, got -1"),
        (LOGITS, IMAGE, {"n_iter": 2.5}, TypeError, "`n_iter` must be an int"),
        (LOGITS, IMAGE, {"n_iter": True}, TypeError, "`n_iter` must be an int"),
        (LOGITS, IMAGE, {"compat": np.ones((2, 2))}, ValueError,
         r"`compat` must be None \(Potts\) or an \(3, 3\) matrix for 3 labels, got shape \(2, 2\)"),
        (LOGITS, IMAGE, {"compat": 1.0}, ValueError,
         r"`compat` must be None \(Potts\) or an \(3, 3\) matrix for 3 labels, got a scalar"),
        (LOGITS, IMAGE, {"compat": np.full((3, 3), np.inf)}, ValueError, "`compat` contains"),
        (LOGITS, IMAGE, {"w_spatial": np.ones(3)}, ValueError, r"`w_spatial` must be a scalar or have shape"),
        (LOGITS, IMAGE, {"w_bilateral": np.nan}, ValueError, "`w_bilateral` must be finite"),
        (LOGITS, IMAGE, {"w_bilateral": "10"}, TypeError, "`w_bilateral` must be a real number"),
        (LOGITS, IMAGE, {"normalization": "NORMALIZE_SYMMETRIC"}, ValueError, "`normalization` must be one of"),
        (LOGITS, IMAGE, {"spatial_dims": 0}, ValueError, "`spatial_dims` must be >= 1"),
        (LOGITS.astype(np.int64), IMAGE, {}, TypeError, "`logits` must be a floating-point array"),
        (LOGITS.astype(np.complex128), IMAGE, {}, TypeError, "`logits` must be a floating-point array"),
        (LOGITS.astype(bool), IMAGE, {}, TypeError, "`logits` must be a floating-point array"),
        (LOGITS, IMAGE.astype(bool), {}, TypeError, "`image` must be a real numeric array"),
        (LOGITS, IMAGE.astype(np.complex64), {}, TypeError, "`image` must be a real numeric array"),
        (LOGITS, IMAGE.astype(object), {}, TypeError, "`image` must be a real numeric array"),
        (LOGITS, IMAGE, {"theta_gamma": 1e-12}, LatticeRangeError, "`theta_gamma` is too small for the image size"),
        (LOGITS, IMAGE, {"theta_alpha": 1e-12}, LatticeRangeError, "`theta_alpha` is too small for the image size"),
        (LOGITS, IMAGE + 200, {"theta_beta": 1e-9}, LatticeRangeError, "`theta_beta` is too small for the image's values"),
        (LOGITS, np.full((6, 7, 3), 1e300), {}, LatticeRangeError, "`theta_beta` is too small .* huge values"),
        (np.float64(2.0), IMAGE, {}, ValueError, "`logits` is a scalar"),
    ],
)
def test_bad_inputs_raise_clear_errors(logits, image, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        meanfield(logits, image, **kwargs)


def test_bad_output_name():
    with pytest.raises(ValueError, match="`output` must be one of"):
        meanfield_fwd(LOGITS, IMAGE, output="softmax")


def test_integer_image_and_theta_types_accepted():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 7, 3))
    q_int = meanfield(logits, rng.integers(0, 255, size=(6, 7, 3)).astype(np.int16), theta_alpha=np.float32(80),
                      n_iter=np.int64(3))
    np.testing.assert_allclose(q_int.sum(-1), 1.0)


def test_a_single_term_is_not_a_list():
    from crfcore import PairwiseTerm, crf, positions

    term = PairwiseTerm(positions((4, 5), 2.0), 3.0)
    with pytest.raises(TypeError, match=r"got a single PairwiseTerm: pass \[term\]"):
        crf(np.zeros((20, 2)), term)
    assert crf(np.zeros((20, 2)), [term]).shape == (20, 2)


def test_image_scale_warns_once(rng, monkeypatch):
    from crfcore import inference

    monkeypatch.setattr(inference, "_warned_scale", set())
    logits = rng.normal(size=(8, 9, 2)).astype(np.float32)
    unit = rng.uniform(0, 1, size=(8, 9, 3))
    with pytest.warns(UserWarning, match=r"lie in \[.*\] but theta_beta=13 is in 0-255 units"):
        meanfield(logits, unit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meanfield(logits, unit)  # once per process
        meanfield(logits, unit, theta_beta=13 / 255)  # the right units: no warning
        meanfield(logits, (unit * 255).astype(np.uint8))
    with pytest.warns(UserWarning, match="16-bit"):
        meanfield(logits, (unit * 65535).astype(np.uint16))
