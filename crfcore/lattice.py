"""The permutohedral lattice: fast high-dimensional Gaussian filtering (Adams, Baek & Davis 2010)."""

from typing import NamedTuple

import numpy as np

from . import _lattice_kernels as K
from ._validation import as_float_array, check_finite, check_nonempty

#: Lattice coordinates are int32; elevated features must stay well inside that range.
_MAX_COORD = 2.0**30


class LatticeArrays(NamedTuple):
    """The arrays of one lattice, grouped (all read-only once built)."""

    offsets: np.ndarray  # (N * (d + 1),) int32: vertex of each point slot
    weights: np.ndarray  # (N * (d + 1),) float64: barycentric weight of each slot
    indptr: np.ndarray  # (M + 1,) int64: CSR vertex -> entries
    points: np.ndarray  # (N * (d + 1),) int32: the point p of each CSR entry
    neighbours: np.ndarray  # (d + 1, M, 2) int32: blur neighbours, M where absent


def elevation_scale(d):
    """Per-feature scale of the elevation matrix times the lattice's inverse standard deviation.

    ``sqrt(2/3) * (d + 1) / sqrt((i + 1)(i + 2))`` for feature ``i`` (Adams et al. 2010, p. 5-6), so that the
    blurred lattice approximates a Gaussian of unit standard deviation in feature space.
    """
    i = np.arange(d, dtype=np.float64)
    return np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((i + 1) * (i + 2))


#: Points per chunk of the parallel lattice construction. Fixed (not tied to the thread count) so that the
#: lattice, and every result, is the same whatever the number of threads.
_CHUNK = 8192


def _pow2(n):
    return 1 << max(6, int(np.ceil(np.log2(max(2, n)))))


class Lattice:
    """A permutohedral lattice built once from per-point features, reused for every filtering.

    ``filter(values)`` computes ``K @ values`` where ``K[i, j]`` approximates the Gaussian
    ``exp(-|f_i - f_j|^2 / 2)`` (up to a constant factor) as in Krähenbühl's densecrf: splat with
    barycentric weights, blur with the stencil [0.5, 1, 0.5] along each of the ``d + 1`` lattice
    directions, slice scaled by ``1 / (1 + 2^-d)``. No normalisation is applied.

    Parameters
    ----------
    features : array_like, shape (N, d)
        Point features, already divided by their kernel widths. Any ``d >= 1``; float32 or float64
        (other real types are converted). Must be finite.

    Attributes
    ----------
    num_points : int
        N.
    dim : int
        d.
    num_vertices : int
        M, the number of lattice vertices in use.

    Examples
    --------
    >>> import numpy as np
    >>> from crfcore import Lattice
    >>> f = np.random.default_rng(0).normal(size=(100, 3))
    >>> lat = Lattice(f)
    >>> lat.filter(np.ones((100, 1))).shape
    (100, 1)
    """

    def __init__(self, features):
        f = np.asarray(features)
        if f.dtype.kind not in "fiu" or f.dtype == np.bool_:
            raise TypeError(f"`features` must be a real numeric array, got dtype {f.dtype}")
        if f.ndim != 2:
            raise ValueError(f"`features` must have shape (N, d), got shape {f.shape}")
        check_nonempty(f, "features")
        f = np.ascontiguousarray(f, dtype=np.float64)
        check_finite(f, "features")
        n, d = f.shape
        scale = elevation_scale(d)
        biggest = float(np.abs(f).max()) * float(scale.max()) * (d + 1)
        if biggest >= _MAX_COORD:
            raise ValueError(
                f"`features` are too large for the lattice (max |feature| = {np.abs(f).max():.3g} with d = {d}); "
                f"features are positions divided by kernel widths, so widths this small make every point its own "
                f"cluster: use larger widths or rescale the features"
            )
        d1 = d + 1
        chunk = min(n, _CHUNK)
        local_keys, counts, offsets, weights = K.embed(f, scale, chunk, _pow2(2 * chunk * d1))
        uniq, table, remap = K.merge(local_keys, counts, chunk * d1, _pow2(2 * int(counts.max())))
        del local_keys
        K.remap_offsets(offsets, remap, chunk, d1)
        m = uniq.shape[0]
        neighbours = K.blur_neighbours(table, uniq)
        indptr, points, w_csr = K.gather_index(offsets, weights, m, d1)
        self.num_points = n
        self.dim = d
        self.num_vertices = m
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.arrays = LatticeArrays(offsets, weights, indptr, points, neighbours)
        self._weights = {np.dtype(np.float64): (weights, w_csr)}
        self._ones = {}

    def __repr__(self):
        return f"Lattice(num_points={self.num_points}, dim={self.dim}, num_vertices={self.num_vertices})"

    def weights_as(self, dtype):
        """Barycentric weights in ``dtype``, per slot and in CSR order (cached)."""
        dtype = np.dtype(dtype)
        if dtype not in self._weights:
            w, w_csr = self._weights[np.dtype(np.float64)]
            self._weights[dtype] = (w.astype(dtype), w_csr.astype(dtype))
        return self._weights[dtype]

    def ones(self, dtype):
        """A cached vector of N ones (the identity scaling)."""
        dtype = np.dtype(dtype)
        if dtype not in self._ones:
            self._ones[dtype] = np.ones(self.num_points, dtype=dtype)
        return self._ones[dtype]

    def workspace(self, n_channels, dtype):
        """Two ``(M + 1, n_channels)`` scratch buffers for :meth:`apply` (reuse them across calls)."""
        shape = (self.num_vertices + 1, n_channels)
        return np.empty(shape, dtype=dtype), np.empty(shape, dtype=dtype)

    def apply(self, values, out, *, transpose=False, pre=None, post=None, work=None):
        """Unchecked filtering for the mean-field loops: ``out = diag(post) K diag(pre) values``.

        ``values`` and ``out`` are C-contiguous ``(N, C)`` arrays of one float dtype; ``pre`` and ``post`` are
        ``(N,)`` arrays of that dtype or None. ``transpose=True`` applies ``K^T`` (blur directions reversed).
        ``work`` is an optional :meth:`workspace` of matching shape and dtype.
        """
        dtype = values.dtype
        a = self.arrays
        w, w_csr = self.weights_as(dtype)
        pre = self.ones(dtype) if pre is None else pre
        post = self.ones(dtype) if post is None else post
        buf, tmp = self.workspace(values.shape[1], dtype) if work is None else work
        d1 = self.dim + 1
        K.splat(values, pre, w_csr, a.indptr, a.points, buf)
        order = range(self.dim, -1, -1) if transpose else range(d1)
        for j in order:
            K.blur(buf, a.neighbours[j], tmp)
            buf, tmp = tmp, buf
        K.slice_(buf, a.offsets, w, dtype.type(self.alpha), post, d1, out)
        return out

    def filter(self, values, transpose=False):
        """Gaussian filtering of ``values`` in feature space: splat, blur, slice.

        Parameters
        ----------
        values : array_like, shape (N, C) or (N,)
            Values to filter, float32 or float64 (other floats become float32). Must be finite.
        transpose : bool, default False
            Apply the exact transpose ``K^T`` (blur directions in reverse order), so that
            ``<K a, b> == <a, K^T b>`` to rounding.

        Returns
        -------
        ndarray
            The filtered values, same shape as ``values``, dtype float32 or float64.
        """
        v = as_float_array(values, "values")
        squeeze = v.ndim == 1
        if squeeze:
            v = v[:, None]
        if v.ndim != 2 or v.shape[0] != self.num_points:
            raise ValueError(
                f"`values` must have shape ({self.num_points}, C) to match the lattice's {self.num_points} "
                f"points, got shape {np.shape(values)}"
            )
        check_nonempty(v, "values")
        check_finite(v, "values")
        out = np.empty_like(v)
        self.apply(v, out, transpose=bool(transpose))
        return out[:, 0] if squeeze else out
