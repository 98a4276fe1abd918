"""Naive O(N^2) oracles for tiny inputs, written for clarity rather than speed (cf. stumpy's tests/naive.py)."""

import numpy as np


def gaussian_matrix(features):
    """The exact Gaussian kernel matrix ``exp(-|f_i - f_j|^2 / 2)`` of ``(N, d)`` features."""
    diff = features[:, None, :] - features[None, :, :]
    return np.exp(-0.5 * (diff**2).sum(-1))


def dense_operator(lattice, n):
    """The ``(N, N)`` matrix of a lattice's filter, column by column (filtering the identity)."""
    return lattice.filter(np.eye(n))


def pixel_features(image, theta_alpha, theta_beta, theta_gamma):
    """Bilateral and spatial features of an ``(H, W, C)`` image, positions as (x, y)."""
    h, w, c = image.shape
    ys, xs = np.mgrid[0:h, 0:w]
    pos = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    colour = image.reshape(-1, c).astype(np.float64)
    return np.hstack([pos / theta_alpha, colour / theta_beta]), pos / theta_gamma


def normalise(k, mode):
    """Kernel normalisation, spelled out: D = diag(K 1)."""
    d = k.sum(axis=1)
    if mode == "symmetric":
        return k / np.sqrt(np.outer(d, d))
    if mode == "after":
        return k / d[:, None]
    if mode == "before":
        return k / d[None, :]
    return k


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def dense_meanfield(logits, k_spatial, k_bilateral, *, n_iter, w_spatial, w_bilateral, compat, normalization):
    """Mean field (Krähenbühl & Koltun 2011, eq. 4) with explicit ``(N, N)`` kernel matrices.

    ``logits``: ``(N, L)``. The pairwise energy between labels ``l`` and ``l'`` is ``compat[l, l']`` times the
    weighted kernel; weights are scalars or ``(L, L)`` label-mixing matrices. Returns ``(Q, Z)``.
    """
    n_lab = logits.shape[1]
    ks = normalise(k_spatial, normalization)
    kb = normalise(k_bilateral, normalization)
    ws = w_spatial * np.eye(n_lab) if np.ndim(w_spatial) == 0 else w_spatial
    wb = w_bilateral * np.eye(n_lab) if np.ndim(w_bilateral) == 0 else w_bilateral
    z = logits.copy()
    q = softmax(z)
    for _ in range(n_iter):
        message = (ks @ q) @ ws.T + (kb @ q) @ wb.T  # per pixel: W_s (K_s Q) + W_b (K_b Q)
        z = logits - message @ compat.T  # E_i(l) = U_i(l) + sum_l' mu(l, l') message_i(l')
        q = softmax(z)
    return q, z
