"""Kernel features of a dense CRF (Krähenbühl & Koltun 2011, eq. 3).

Positions are listed with the last spatial axis first (x, then y, then z), as densecrf's ``DenseCRF2D`` does,
so that lattices built here are the same as densecrf's.
"""

import numbers

import numpy as np

from .params import kernel_width


def _spatial_shape(spatial_shape):
    try:
        shape = tuple(spatial_shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"`spatial_shape` must be a sequence of positive ints, got {spatial_shape!r}")
    return tuple(int(s) for s in shape)


def positions(spatial_shape, width=1.0, out=None):
    """Pixel coordinates divided by ``width``, shape ``(prod(spatial_shape), len(spatial_shape))``, last axis first.

    ``width`` is a positive finite float or one per spatial axis (in axis order); anything else is a ValueError
    (TypeError for a wrong type). ``out``, if given, is a float64 array whose first ``len(spatial_shape)`` columns
    receive them.
    """
    spatial_shape = _spatial_shape(spatial_shape)
    n_dims = len(spatial_shape)
    width = kernel_width(width, "width", n_dims, "spatial axis")
    n = int(np.prod(spatial_shape))
    if out is None:
        out = np.empty((n, n_dims), dtype=np.float64)
    view = out.reshape(*spatial_shape, out.shape[1])
    for axis, size in enumerate(spatial_shape):
        shape = [1] * n_dims
        shape[axis] = size
        w = width if np.ndim(width) == 0 else width[axis]
        view[..., n_dims - 1 - axis] = (np.arange(size, dtype=np.float64) / w).reshape(shape)
    return out


def spatial_features(spatial_shape, theta_gamma):
    """Features of the smoothness (spatial) kernel: ``p / theta_gamma``."""
    spatial_shape = _spatial_shape(spatial_shape)
    return positions(spatial_shape, kernel_width(theta_gamma, "theta_gamma", len(spatial_shape), "spatial axis"))


def bilateral_features(image, spatial_shape, theta_alpha, theta_beta):
    """Features of the appearance (bilateral) kernel: ``(p / theta_alpha, I / theta_beta)``.

    Parameters
    ----------
    image : ndarray, shape (N, C)
        Pixel values in their own units (0-255 for uint8 images), flattened over ``spatial_shape``; any real
        dtype (divided in float64).
    spatial_shape : tuple of int
    theta_alpha, theta_beta : float or ndarray
        Kernel widths in pixels (or one per spatial axis) and in image units (or one per channel).
    """
    image = np.asarray(image)
    spatial_shape = _spatial_shape(spatial_shape)
    n_dims = len(spatial_shape)
    theta_alpha = kernel_width(theta_alpha, "theta_alpha", n_dims, "spatial axis")
    theta_beta = kernel_width(theta_beta, "theta_beta", image.shape[1], "channel")
    out = np.empty((image.shape[0], n_dims + image.shape[1]), dtype=np.float64)
    positions(spatial_shape, theta_alpha, out)
    np.divide(image, theta_beta, out=out[:, n_dims:], dtype=np.float64)
    return out
