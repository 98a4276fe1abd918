"""Kernel features of a dense CRF (Krähenbühl & Koltun 2011, eq. 3).

Positions are listed with the last spatial axis first (x, then y, then z), as densecrf's ``DenseCRF2D`` does,
so that lattices built here are the same as densecrf's.
"""

import numpy as np


def positions(spatial_shape):
    """Pixel coordinates, shape ``(prod(spatial_shape), len(spatial_shape))``, last axis first."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial_shape], indexing="ij")
    return np.stack([g.ravel() for g in reversed(grids)], axis=1)


def spatial_features(spatial_shape, theta_gamma):
    """Features of the smoothness (spatial) kernel: ``p / theta_gamma``."""
    return positions(spatial_shape) / theta_gamma


def bilateral_features(image, spatial_shape, theta_alpha, theta_beta):
    """Features of the appearance (bilateral) kernel: ``(p / theta_alpha, I / theta_beta)``.

    Parameters
    ----------
    image : ndarray, shape (N, C)
        Pixel values in their own units (0-255 for uint8 images), flattened over ``spatial_shape``.
    spatial_shape : tuple of int
    theta_alpha, theta_beta : float
        Kernel widths in pixels and in image units.
    """
    pos = positions(spatial_shape) / theta_alpha
    return np.concatenate([pos, np.asarray(image, dtype=np.float64) / theta_beta], axis=1)
