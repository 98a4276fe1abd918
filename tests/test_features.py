"""crfcore.features: the pixel-position helpers check their widths and shapes, and compute what they say."""

import numpy as np
import pytest

from crfcore.features import bilateral_features, positions, spatial_features


@pytest.mark.parametrize("call, exc, match", [
    (lambda: positions((4, 5), (1.0,)), ValueError, r"`width` must be a scalar or have one value per spatial axis "
                                                    r"\(2\), got shape \(1,\)"),
    (lambda: positions((4, 5), 0.0), ValueError, "`width` must be a positive finite number, got 0.0"),
    (lambda: positions((4, 5), np.nan), ValueError, "`width` must be a positive finite number, got nan"),
    (lambda: positions((4, 5), (2.0, np.inf)), ValueError, r"`width` must be positive and finite, got \[2.0, inf\]"),
    (lambda: positions((4, 5), "3"), TypeError, "`width` must be a positive real number"),
    (lambda: positions((4, 0)), ValueError, "`spatial_shape` must be a sequence of positive ints"),
    (lambda: positions(5), ValueError, "`spatial_shape` must be a sequence of positive ints, got 5"),
    (lambda: spatial_features((4, 5), -3.0), ValueError, "`theta_gamma` must be a positive finite number"),
    (lambda: bilateral_features(np.zeros((20, 3)), (4, 5), 80.0, (13.0, 13.0)), ValueError,
     r"`theta_beta` must be a scalar or have one value per channel \(3\)"),
])
def test_bad_widths_and_shapes_are_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_positions_per_axis_last_axis_first():
    got = positions((2, 3), (2.0, 4.0))
    yy, xx = np.mgrid[0:2, 0:3]
    np.testing.assert_array_equal(got, np.stack([xx.ravel() / 4.0, yy.ravel() / 2.0], 1))
    np.testing.assert_array_equal(positions((2, 3), 2.0), positions((2, 3), (2.0, 2.0)))
    image = np.arange(6 * 3, dtype=np.uint8).reshape(6, 3)
    np.testing.assert_array_equal(bilateral_features(image, (2, 3), (2.0, 4.0), 10.0)[:, 2:], image / 10.0)
