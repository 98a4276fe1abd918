"""The mean-field forward in NumPy alone: what serves a process's first calls while Numba compiles its kernels.

The same lattice as :class:`crfcore.Lattice` (Adams et al. 2010; the embedding's float64 steps in the Numba
kernel's order, so that points on a simplex boundary, as pixel grids have, land in the same simplex and both build
the same vertices and barycentric weights), numbered with ``np.unique`` on packed integer keys, blurred with
gathers and sliced with a weighted sum; then densecrf's normalisation and the iterations of
:mod:`crfcore.inference`. Only the order of float sums differs from the compiled kernels, so results agree to
rounding (tested). It is about six times slower than the kernels and needs ``O(N (d + 1))`` more memory, which is
why :mod:`crfcore.warmup` uses it only until the compiled kernels are ready.
"""

import numpy as np

from ..features import bilateral_features, spatial_features
from ..lattice import elevation_scale

#: Packed vertex keys (int64) keep this many bits free: a lattice that needs more is not served here.
_KEY_BITS = 62


def embed(features):
    """Barycentric ``weights`` ``(N, d + 1)`` float64 and the vertices ``(N, d + 1, d)`` int64 (first ``d``
    coordinates; the last is minus their sum) of each point's simplex, as the Numba kernel finds them."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    d1 = d + 1
    scale = elevation_scale(d)
    el = np.empty((n, d1))
    acc = np.zeros(n)
    for j in range(d, 0, -1):  # elevation: cumulative sums of the scaled features, in the kernel's order
        cf = f[:, j - 1] * scale[j - 1]
        el[:, j] = acc - j * cf
        acc = acc + cf
    el[:, 0] = acc
    v = el * (1.0 / d1)
    up = np.ceil(v) * d1
    down = np.floor(v) * d1
    r0 = np.where(up - el < el - down, up, down).astype(np.int64)  # nearest remainder-0 point
    # rank: position in the residuals sorted in decreasing order, ties by index (the kernel's comparisons)
    order = np.argsort(-(el - r0), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(d1), order.shape), axis=1)
    rank += (r0.sum(axis=1) // d1)[:, None]
    fix = (rank < 0).astype(np.int64) - (rank > d)  # back onto the plane
    rank += fix * d1
    r0 += fix * d1
    srt = np.empty((n, d1))
    np.put_along_axis(srt, rank, (el - r0) * (1.0 / d1), axis=1)
    weights = np.empty((n, d1))
    weights[:, 0] = srt[:, d] + (1.0 - srt[:, 0])
    weights[:, 1:] = srt[:, d - 1::-1] - srt[:, d:0:-1]
    # vertex r: r0 + r on every coordinate, d + 1 less on the coordinates ranked above d - r
    r = np.arange(d1)
    vertices = r0[:, None, :d] + r[None, :, None] - d1 * (rank[:, None, :d] > d - r[None, :, None])
    return weights, vertices


class NumpyLattice:
    """A permutohedral lattice in NumPy: ``filter(values)`` is :meth:`crfcore.Lattice.filter` to float rounding.

    Raises ``OverflowError`` when the vertices' keys would not fit in 62 bits (very large feature ranges); the
    caller then uses the compiled lattice.
    """

    def __init__(self, features, dtype=np.float64):
        weights, vertices = embed(features)
        n, d1, d = vertices.shape
        lo = vertices.min(axis=(0, 1)) - 2 * d1  # room for the blur neighbours' shifts
        radix = vertices.max(axis=(0, 1)) - lo + 2 * d1 + 1
        if np.sum(np.log2(radix.astype(np.float64))) >= _KEY_BITS:
            raise OverflowError("the lattice's vertex keys need more than 62 bits")
        powers = np.concatenate([[1], np.cumprod(radix[:-1])]).astype(np.int64)
        keys = ((vertices - lo) * powers).sum(axis=-1).reshape(-1)
        uniq, self.offsets = np.unique(keys, return_inverse=True)
        self.offsets = self.offsets.reshape(n, d1)
        m = uniq.shape[0]
        dirs = np.ones((d1, d), dtype=np.int64)  # direction j: -d on coordinate j (the implied one for j = d)
        dirs[np.arange(d), np.arange(d)] = -d
        deltas = dirs @ powers
        self.neighbours = np.empty((d1, 2, m), dtype=np.int64)
        for j in range(d1):
            for side, sign in enumerate((-1, 1)):
                target = uniq + sign * deltas[j]
                at = np.minimum(np.searchsorted(uniq, target), m - 1)
                self.neighbours[j, side] = np.where(uniq[at] == target, at, m)  # absent: the zero row m
        self.weights = weights.astype(dtype)
        self.num_vertices = m
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    def filter(self, values):
        """``K @ values`` for ``values`` ``(N, C)``: splat, blur along each direction, slice (unnormalised)."""
        m = self.num_vertices
        flat = self.offsets.reshape(-1)
        lat = np.zeros((m + 1, values.shape[1]), dtype=values.dtype)
        contrib = self.weights[:, :, None] * values[:, None, :]
        for c in range(values.shape[1]):
            lat[:m, c] = np.bincount(flat, weights=contrib[:, :, c].reshape(-1), minlength=m)
        for nb in self.neighbours:
            lat[:m] = lat[:m] + 0.5 * (lat[nb[0]] + lat[nb[1]])
        out = np.einsum("nr,nrc->nc", self.weights, lat[self.offsets])
        return (self.alpha * out).astype(values.dtype, copy=False)


class NumpyKernel:
    """A :class:`NumpyLattice` with densecrf's normalisation (as :class:`crfcore._engine.kernel.Kernel`)."""

    def __init__(self, features, normalization, dtype):
        self.lattice = NumpyLattice(features, dtype)
        norm = self.lattice.filter(np.ones((features.shape[0], 1), dtype))[:, 0]
        self.pre = self.post = None
        if normalization == "symmetric":
            self.pre = self.post = (1.0 / np.sqrt(norm + 1e-20)).astype(dtype)[:, None]
        elif normalization == "after":
            self.post = (1.0 / (norm + 1e-20)).astype(dtype)[:, None]
        elif normalization == "before":
            self.pre = (1.0 / (norm + 1e-20)).astype(dtype)[:, None]

    def apply(self, x):
        y = self.lattice.filter(x if self.pre is None else x * self.pre)
        return y if self.post is None else y * self.post


def softmax(z):
    """Row-wise softmax of ``(N, L)``, in ``z``'s dtype; values below the smallest normal number become 0."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    q = e / e.sum(axis=1, keepdims=True)
    q[q < np.finfo(q.dtype).tiny] = 0
    return q


def forward_image(image_flat, u, spatial_shape, params, a_s, a_b):
    """``(Z_T, Q_T)`` of one image: ``image_flat`` ``(N, C)``, ``u`` ``(N, L)`` in the compute dtype, ``params`` a
    checked :class:`crfcore.params.CrfParams`, ``a_s`` and ``a_b`` the ``(L, L)`` transforms ``mu W``."""
    dtype = u.dtype
    q = softmax(u)
    if params.n_iter == 0:
        return u, q
    kb = NumpyKernel(bilateral_features(image_flat, spatial_shape, params.theta_alpha, params.theta_beta),
                     params.normalization, dtype)
    ks = NumpyKernel(spatial_features(spatial_shape, params.theta_gamma), params.normalization, dtype)
    a_s, a_b = a_s.astype(dtype).T, a_b.astype(dtype).T
    z = u
    for _ in range(params.n_iter):
        z = u - ks.apply(q) @ a_s - kb.apply(q) @ a_b
        q = softmax(z)
    return z, q
