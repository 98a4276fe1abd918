"""The permutohedral lattice: fast high-dimensional Gaussian filtering (Adams, Baek & Davis 2010)."""

from typing import NamedTuple

import numpy as np

from ._kernels import lattice as K
from ._runtime import parallel as _parallel
from ._validation import LatticeRangeError, as_float_array, check_finite, check_nonempty

#: Elevated features must stay well inside int32 (the pure-TensorFlow lattice's coordinates).
_MAX_COORD = 2.0**30


class LatticeArrays(NamedTuple):
    """The arrays of one lattice, grouped (all read-only once built; see :mod:`crfcore._kernels.lattice`)."""

    offsets: np.ndarray  # (N * (d + 1),) uint16 (int32 where chunk * (d + 1) > 65536): chunk-local row of each slot
    weights: np.ndarray  # (N * (d + 1),) float32 (or float64): barycentric weight of each slot
    starts: np.ndarray  # (chunks + 1,) int64: first local row of each chunk
    remap: np.ndarray  # (R,) int32: vertex of each local row
    indptr: np.ndarray  # (M + 1,) int64: CSR vertex -> local rows
    rows: np.ndarray  # (R,) int32
    neighbours: np.ndarray  # (d + 1, M, 2) int32: blur neighbours, M where absent


def elevation_scale(d):
    """Per-feature scale of the elevation matrix times the lattice's inverse standard deviation.

    ``sqrt(2/3) * (d + 1) / sqrt((i + 1)(i + 2))`` for feature ``i`` (Adams et al. 2010, p. 5-6), so that the
    blurred lattice approximates a Gaussian of unit standard deviation in feature space.
    """
    i = np.arange(d, dtype=np.float64)
    return np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((i + 1) * (i + 2))


def chunk_size(n):
    """Points per chunk of the lattice construction: about N / 16, between 1024 and 8192.

    It depends on N alone (never on the thread count), so the lattice, and every result, is the same whatever
    the number of threads.
    """
    return int(min(max(n // 16, 1024), 8192))


#: Chunks embedded at once (in parallel) before their vertices are numbered.
_WAVE = 8


def key_layout(fmin, fmax, scale):
    """How the first ``d`` coordinates of a vertex pack into uint64 words (see :mod:`crfcore._kernels.lattice`).

    Bounds every elevated coordinate by interval arithmetic on the per-feature ranges, widens the bounds by
    the moves a vertex or a blur neighbour can make from there, and returns ``(lo, bits, per_word, n_words)``.
    """
    d = scale.shape[0]
    d1 = d + 1
    cmin, cmax = fmin * scale, fmax * scale
    # elevated[k] = sum_{i >= k} c_i - k c_{k-1}  (k = 0 has no second term)
    tail_min = np.cumsum(cmin[::-1])[::-1]
    tail_max = np.cumsum(cmax[::-1])[::-1]
    k = np.arange(d, dtype=np.float64)
    prev_min = np.concatenate([[0.0], cmin[:-1]])
    prev_max = np.concatenate([[0.0], cmax[:-1]])
    emin = tail_min - k * prev_max
    emax = tail_max - k * prev_min
    lo = (np.floor(emin / d1) * d1 - 3 * d1 - 1).astype(np.int64)
    hi = (np.ceil(emax / d1) * d1 + 3 * d1 + 1).astype(np.int64)
    bits = int(np.max(hi - lo)).bit_length()
    per_word = 64 // bits
    n_words = -(-d // per_word)
    return lo, bits, per_word, n_words


class Lattice:
    """A permutohedral lattice built once from per-point features, reused for every filtering.

    ``filter(values)`` computes ``K @ values`` where ``K[i, j]`` approximates the Gaussian
    ``exp(-|f_i - f_j|^2 / 2)`` (up to a constant factor) as in Krähenbühl's densecrf: splat with
    barycentric weights, blur with the stencil [0.5, 1, 0.5] along each of the ``d + 1`` lattice
    directions, slice scaled by ``1 / (1 + 2^-d)``. No normalisation is applied.

    Construction is parallel (chunks of points embedded and deduplicated at once, then numbered in chunk
    order), and the result does not depend on the number of threads.

    Parameters
    ----------
    features : array_like, shape (N, d)
        Point features, already divided by their kernel widths. Any ``d >= 1``; float32 or float64
        (other real types are converted). Must be finite.
    dtype : {float32, float64}, default float32
        Dtype of the stored barycentric weights. float32 halves their memory traffic and is what float32
        filtering needs; float64 makes float64 filtering exact to float64 rounding (finite-difference checks of
        :meth:`features_grad` need it).
    keep_features : bool, default True
        Keep a float64 copy of the features for :meth:`features_grad` (``N * d * 8`` bytes).

    Attributes
    ----------
    num_points : int
        N.
    dim : int
        d.
    num_vertices : int
        M, the number of lattice vertices in use.
    arrays : LatticeArrays
        The index arrays (their ``nbytes`` are the lattice's memory).
    features : ndarray or None
        The features (read-only), unless built with ``keep_features=False``.

    Examples
    --------
    >>> import numpy as np
    >>> from crfcore import Lattice
    >>> f = np.random.default_rng(0).normal(size=(100, 3))
    >>> lat = Lattice(f)
    >>> lat.filter(np.ones((100, 1))).shape
    (100, 1)
    """

    def __init__(self, features, *, dtype=np.float32, keep_features=True):
        f = np.asarray(features)
        if f.dtype.kind not in "fiu" or f.dtype == np.bool_:
            raise TypeError(f"`features` must be a real numeric array, got dtype {f.dtype}")
        if f.ndim != 2:
            raise ValueError(f"`features` must have shape (N, d), got shape {f.shape}")
        check_nonempty(f, "features")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"`dtype` (of the barycentric weights) must be float32 or float64, got {dtype}")
        f = np.ascontiguousarray(f, dtype=np.float64)
        _parallel.run(self._build, f, dtype)
        self.features = None
        if keep_features:
            self.features = f if f is not features else f.copy()  # never the caller's array: it may change
            self.features.flags.writeable = False

    def _build(self, f, dtype):
        _parallel.checkpoint()
        fmin, fmax, finite = K.feature_range(f)
        if not finite:
            check_finite(f, "features")  # raises, counting the bad values
        n, d = f.shape
        scale = elevation_scale(d)
        biggest = float(np.maximum(np.abs(fmin), np.abs(fmax)).max())
        if biggest * float(scale.max()) * (d + 1) >= _MAX_COORD:
            raise LatticeRangeError(
                f"`features` are too large for the lattice (max |feature| = {biggest:.3g} with d = {d}); "
                f"features are positions divided by kernel widths, so widths this small make every point its own "
                f"cluster: use larger widths or rescale the features"
            )
        lo, bits, per_word, n_words = key_layout(fmin, fmax, scale)
        chunk = chunk_size(n)
        # a chunk has at most chunk * (d + 1) local rows: 16-bit offsets where they fit (half the memory traffic)
        offsets = np.empty(n * (d + 1), dtype=np.uint16 if chunk * (d + 1) <= 1 << 16 else np.int32)
        weights = np.empty(n * (d + 1), dtype=dtype)
        # embed _WAVE chunks at a time in parallel, then number their new vertices globally in chunk order (serial:
        # the numbering is the same whatever the thread count). The chunks run as a serial kernel on several
        # threads, and the loops are Python's: a prange kernel, or a kernel calling one, compiles the embedding's
        # code two or three times over (6 s of a cold compile against 3; docs/design/compile-time.md)
        d1, n_chunks = d + 1, -(-n // chunk)
        stride = chunk * d1
        counts, keys, starts, remap, uniq, tkeys, tids, shift = K.new_tables(n, d1, n_chunks, _WAVE, stride, n_words)
        fields = K.key_fields(np.int64(d), np.int64(bits), np.int64(per_word), np.int64(n_words))
        m, shift = np.int64(0), np.uint64(shift)  # scalars come back as Python ints: typed as the kernels take them
        for c0 in range(0, n_chunks, _WAVE):
            _parallel.checkpoint()  # cancelled: the half-built lattice is discarded
            c1 = min(n_chunks, c0 + _WAVE)
            _parallel.spread(lambda i: K.embed_chunk(f, scale, lo, fields, chunk, c0 + i, i, offsets, weights, keys,
                                                     counts), c1 - c0)
            remap, uniq, m, tkeys, tids, shift = K.merge_wave(c0, c1, stride, keys, counts, starts, remap, uniq, m,
                                                              tkeys, tids, shift)
            m, shift = np.int64(m), np.uint64(shift)
        m = int(m)
        remap, uniq = remap[:starts[n_chunks]].copy(), uniq[:m]
        neighbours = K.blur_neighbours(uniq, tkeys, tids, shift, d, bits, per_word)
        del uniq, tkeys, tids
        indptr, rows = K.invert_remap(remap, m)
        self.num_points = n
        self.dim = d
        self.num_vertices = m
        self.chunk = chunk
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.arrays = LatticeArrays(offsets, weights, starts, remap, indptr, rows, neighbours)
        self._ones = {}

    def __repr__(self):
        return f"Lattice(num_points={self.num_points}, dim={self.dim}, num_vertices={self.num_vertices})"

    @property
    def nbytes(self):
        """Memory of the lattice's index arrays and weights."""
        return sum(a.nbytes for a in self.arrays)

    def ones(self, dtype):
        """A cached vector of N ones (the identity scaling)."""
        dtype = np.dtype(dtype)
        if dtype not in self._ones:
            self._ones[dtype] = np.ones(self.num_points, dtype=dtype)
        return self._ones[dtype]

    def workspace(self, n_channels, dtype):
        """Scratch buffers for :meth:`apply` (reuse them across calls): the chunks' local rows ``(R, C)`` and
        two ``(M + 1, C)`` vertex buffers."""
        local = np.empty((self.arrays.remap.shape[0], n_channels), dtype=dtype)
        shape = (self.num_vertices + 1, n_channels)
        return local, np.empty(shape, dtype=dtype), np.empty(shape, dtype=dtype)

    def splat_blur(self, values, pre, work, transpose=False):
        """Unchecked: splat ``diag(pre) values`` and blur it (directions reversed for the transpose), leaving the
        blurred vertex values in ``work[0]``, the chunks' local rows, ready for :meth:`apply`'s slice or for
        :func:`~crfcore._kernels.lattice.slice_grad`."""
        _parallel.checkpoint()
        a = self.arrays
        local, buf, tmp = work
        K.splat(values, pre, a.offsets, a.weights, a.starts, self.chunk, local)
        K.gather_rows(local, a.indptr, a.rows, buf)
        if K.blur(buf, tmp, a.neighbours, transpose):
            buf = tmp
        K.scatter_rows(buf, a.remap, local)

    def apply(self, values, out, *, transpose=False, pre=None, post=None, work=None, scale=1.0, accumulate=False):
        """Unchecked filtering for the mean-field loops: ``out = diag(post) K diag(pre) values``.

        Callers run it through :func:`crfcore._runtime.parallel.run` (as :meth:`filter` and the mean field do).

        ``values`` and ``out`` are C-contiguous ``(N, C)`` arrays of one float dtype; ``pre`` and ``post`` are
        ``(N,)`` arrays of that dtype or None. ``transpose=True`` applies ``K^T`` (blur directions reversed).
        ``work`` is an optional :meth:`workspace` of matching shape and dtype. ``scale`` multiplies the result;
        ``accumulate=True`` adds it to ``out`` instead of overwriting it. On return ``work[0]`` still holds the
        blurred vertex values (see :meth:`splat_blur`).
        """
        dtype = values.dtype
        a = self.arrays
        pre = self.ones(dtype) if pre is None else pre
        post = self.ones(dtype) if post is None else post
        work = self.workspace(values.shape[1], dtype) if work is None else work
        self.splat_blur(values, pre, work, transpose)
        K.slice_(work[0], a.offsets, a.weights, a.starts, self.chunk, dtype.type(self.alpha * scale), post, out,
                 accumulate)
        return out

    def slice_grad(self, local, other, post, scale, grad_w):
        """Unchecked: ``grad_w[p, r] += alpha * scale * post[p] * <other[p], local row of vertex r of p>``, the
        derivative of a slice w.r.t. the barycentric weights (:func:`~crfcore._kernels.lattice.slice_grad`)."""
        post = self.ones(other.dtype) if post is None else post
        a = self.arrays
        K.slice_grad(local, a.offsets, a.starts, self.chunk, other, post, float(self.alpha * scale), grad_w)

    def weights_grad(self, x, g, grad_w, *, transpose=False, pre=None, post=None, scale=1.0, work=None):
        """Unchecked: accumulate into ``grad_w`` ``(N, d + 1)`` float64 the derivative w.r.t. the barycentric
        weights of ``l = scale * <g, diag(post) K diag(pre) x>`` (``K^T`` with ``transpose``).

        Two passes (docs/design/feature-gradient.md): through the slice, the blurred splat of
        ``pre x`` against ``g``; through the splat, the reversed blur of the splat of ``post g`` against ``x``.
        """
        dtype = x.dtype
        pre = self.ones(dtype) if pre is None else pre
        post = self.ones(dtype) if post is None else post
        work = self.workspace(x.shape[1], dtype) if work is None else work
        self.splat_blur(x, pre, work, transpose)
        self.slice_grad(work[0], g, post, scale, grad_w)
        self.splat_blur(g, post, work, not transpose)
        self.slice_grad(work[0], x, pre, scale, grad_w)

    def features_grad_from(self, grad_w, features):
        """Unchecked: ``dl/dfeatures`` ``(N, d)`` float64 from the weights' gradient ``grad_w`` ``(N, d + 1)``;
        ``features`` are those the lattice was built from."""
        out = np.empty((self.num_points, self.dim))
        K.weights_to_features(features, elevation_scale(self.dim), grad_w, out)
        return out

    def features_grad(self, values, grad, transpose=False):
        """Gradient of ``<grad, filter(values, transpose)>`` w.r.t. the lattice's features.

        The exact derivative of the lattice computation as built (densecrf's ``Permutohedral::gradient``): the
        vertices and simplices are piecewise constant in the features, the barycentric weights move, so the
        result is exact wherever no point sits on a simplex boundary (there the filter is continuous but not
        differentiable). For a Gaussian of widths ``theta``, ``f = p / theta`` gives
        ``dl/dtheta = -sum(df * f) / theta``.

        Parameters
        ----------
        values : array_like, shape (N, C) or (N,)
            The filtered values ``x``.
        grad : array_like, same shape as ``values``
            The upstream gradient ``g`` of a loss w.r.t. ``filter(values, transpose)``.
        transpose : bool, default False
            Differentiate ``K^T`` instead of ``K``.

        Returns
        -------
        ndarray, shape (N, d), float64
            ``dl/dfeatures``.

        Raises
        ------
        ValueError
            If the lattice was built with ``keep_features=False``.
        """
        if self.features is None:
            raise ValueError("this lattice was built with keep_features=False; rebuild it with keep_features=True")
        x = self._checked_values(values, "values")
        g = self._checked_values(grad, "grad")
        if g.shape != x.shape:
            raise ValueError(f"`grad` must have the shape of `values` {np.shape(values)}, got {np.shape(grad)}")
        dtype = np.promote_types(x.dtype, g.dtype)
        x, g = x.astype(dtype, copy=False), g.astype(dtype, copy=False)
        return _parallel.run(self._features_grad, x, g, _check_bool(transpose, "transpose"))

    def _features_grad(self, x, g, transpose):
        grad_w = np.zeros((self.num_points, self.dim + 1))
        self.weights_grad(x, g, grad_w, transpose=transpose)
        return self.features_grad_from(grad_w, self.features)

    def _checked_values(self, values, name):
        v = as_float_array(values, name)
        if v.ndim == 1:
            v = v[:, None]
        if v.ndim != 2 or v.shape[0] != self.num_points:
            raise ValueError(
                f"`{name}` must have shape ({self.num_points}, C) to match the lattice's {self.num_points} "
                f"points, got shape {np.shape(values)}"
            )
        check_nonempty(v, name)
        check_finite(v, name)
        return v

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
        squeeze = np.ndim(values) == 1
        v = self._checked_values(values, "values")
        out = np.empty_like(v)
        _parallel.run(self.apply, v, out, transpose=_check_bool(transpose, "transpose"))
        return out[:, 0] if squeeze else out


def _check_bool(x, name):
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {x!r}")
    return bool(x)
