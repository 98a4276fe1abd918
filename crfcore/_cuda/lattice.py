"""The permutohedral lattice on a CUDA device: :class:`crfcore.Lattice`'s lattice, built and applied there.

The vertices, their numbering (first use, as on the CPU), the barycentric weights and the blur neighbours are those
:class:`crfcore.Lattice` builds from the same features; filtering sums in another order, so results agree to float
rounding. See :mod:`crfcore._kernels.cuda_lattice` for how it is built.
"""

import numpy as np

from .._kernels import cuda_lattice as K
from .._kernels import cuda_meanfield as CK
from .._validation import nonfinite_error
from ..lattice import _MAX_COORD, LatticeRangeError, elevation_scale, key_layout
from . import device as dev


def _scan_tile():
    return 16 if dev.simulator() else 1024


def _radix_tile():
    return 64 if dev.simulator() else 1024


def exclusive_scan(values, out):
    """``out = cumsum(values) - values`` for a 1-D integer device array; returns the total (a host int)."""
    n = values.shape[0]
    tile = _scan_tile()
    n_tiles = -(-n // tile)
    sums = dev.empty(n_tiles, np.int64)
    dev.launch(K.scan_tiles, n_tiles, values, out, sums, tile)
    if n_tiles == 1:
        return int(dev.to_host(sums)[0])
    offsets = dev.empty(n_tiles, np.int64)
    total = exclusive_scan(sums, offsets)
    dev.launch(K.add_tile_offsets, n, out, offsets, tile)
    return total


def stable_order(keys, n_bits):
    """The indices ``0 .. n - 1`` sorted stably by ``keys`` (int32, ``0 <= key < 2 ** n_bits``): an LSD radix sort,
    each pass one thread per tile of consecutive values (in order, so equal keys keep their order)."""
    n = keys.shape[0]
    tile = _radix_tile()
    n_tiles = -(-n // tile)
    values = dev.empty(n, np.int32)
    dev.launch(K.iota, n, values)
    spare = [dev.empty(n, np.int32), dev.empty(n, np.int32)]  # the caller's keys are only read
    values2 = dev.empty(n, np.int32)
    hist = dev.empty(K.RADIX * n_tiles, np.int64)
    offsets = dev.empty(K.RADIX * n_tiles, np.int64)
    for i, shift in enumerate(range(0, max(1, n_bits), K.RADIX_BITS)):
        dev.launch(K.radix_histogram, n_tiles, keys, shift, tile, n_tiles, hist)
        exclusive_scan(hist, offsets)
        keys2 = spare[i % 2]
        dev.launch(K.radix_scatter, n_tiles, keys, values, shift, tile, n_tiles, offsets, keys2, values2)
        keys = keys2
        values, values2 = values2, values
    return values


def feature_range(x):
    """Per-column minimum and maximum of a 2-D device array (host float64) and its count of non-finite values."""
    n, d = x.shape
    n_blocks = -(-n // CK.BLOCK_ROWS)
    lo, hi = dev.empty((n_blocks, d), np.float64), dev.empty((n_blocks, d), np.float64)
    bad = dev.empty((n_blocks, d), np.int64)
    dev.launch(CK.column_range, n_blocks * d, x, lo, hi, bad)
    return dev.to_host(lo).min(axis=0), dev.to_host(hi).max(axis=0), int(dev.to_host(bad).sum())


class CudaLattice:
    """A permutohedral lattice built on the device from ``features`` (a C-contiguous ``(N, d)`` float64 device
    array, already divided by the kernel widths); barycentric weights in ``dtype``.

    ``apply`` is :meth:`crfcore.Lattice.apply` on device arrays; ``weights_grad`` and ``features_grad_from`` its
    features gradient.
    """

    def __init__(self, features, dtype):
        n, d = features.shape
        d1 = d + 1
        if d1 > K.MAX_D1:
            raise ValueError(f"device='cuda' supports up to {K.MAX_D1 - 1} feature dimensions (spatial axes plus image "
                             f"channels), got {d}; use device='cpu'")
        fmin, fmax, bad = feature_range(features)
        if bad:
            raise nonfinite_error("features", bad)
        scale = elevation_scale(d)
        biggest = float(np.maximum(np.abs(fmin), np.abs(fmax)).max())
        if biggest * float(scale.max()) * d1 >= _MAX_COORD:
            raise LatticeRangeError(f"`features` are too large for the lattice (max |feature| = {biggest:.3g} with d = {d}); "
                             f"features are positions divided by kernel widths, so widths this small make every "
                             f"point its own cluster: use larger widths or rescale the features")
        lo, bits, per_word, n_words = key_layout(fmin, fmax, scale)
        if n_words > K.MAX_WORDS:
            raise ValueError(f"the lattice's vertex keys need {n_words} 64-bit words, more than the {K.MAX_WORDS} "
                             f"device='cuda' supports; use device='cpu'")
        nq = n * d1
        if nq >= 2**31 - 1:
            raise ValueError(f"{n} points with {d} features are too many for one device lattice (N * (d + 1) must "
                             f"stay below 2**31); split the input")
        k = np.arange(d)
        word = (k // per_word).astype(np.int64)
        fshift = ((k % per_word) * bits).astype(np.uint64)
        ones = np.zeros(n_words, dtype=np.uint64)
        np.add.at(ones, word, np.left_shift(np.uint64(1), fshift))
        capacity = 1 << max(10, int(2 * nq - 1).bit_length())
        table = dev.full(capacity, K.EMPTY, np.int32)
        qkeys = dev.empty((nq, n_words), np.uint64)
        slot_of = dev.empty(nq, np.int64)
        weights = dev.empty(nq, dtype)
        scale_d, lo_d, word_d, fshift_d = (dev.to_device(a) for a in (scale, lo.astype(np.int64), word, fshift))
        dev.launch(K.embed, n, features, scale_d, lo_d, word_d, fshift_d, weights, qkeys, table, slot_of)
        flags = dev.empty(nq, np.int32)
        dev.launch(K.first_flags, nq, table, slot_of, flags)
        first_index = dev.empty(nq, np.int32)
        m = exclusive_scan(flags, first_index)
        del flags
        vertex = dev.empty(nq, np.int32)
        first_of = dev.empty(m, np.int32)
        dev.launch(K.vertex_ids, nq, table, slot_of, first_index, vertex, first_of)
        del slot_of
        neighbours = dev.empty((d1, m, 2), np.int32)
        dev.launch(K.blur_neighbours, m, qkeys, first_of, table, first_index, dev.to_device(ones), word_d, fshift_d,
                   neighbours)
        del qkeys, table, first_index, first_of
        counts = dev.zeros(m + 1, np.int32)
        dev.launch(K.count_rows, nq, vertex, counts)
        indptr = dev.empty(m + 1, np.int64)
        exclusive_scan(counts, indptr)
        self.rows = stable_order(vertex, int(m - 1).bit_length())
        self.indptr = indptr
        self.vertex = vertex
        self.weights = weights
        self.neighbours = neighbours
        self.num_points, self.dim, self.num_vertices = n, d, m
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self._scale = scale_d
        self._ones = {}
        self._work = {}

    def __repr__(self):
        return f"CudaLattice(num_points={self.num_points}, dim={self.dim}, num_vertices={self.num_vertices})"

    @property
    def nbytes(self):
        """Device memory of the lattice's arrays."""
        return sum(a.nbytes for a in (self.weights, self.vertex, self.rows, self.indptr, self.neighbours))

    def ones(self, dtype, n_channels=None):
        """A cached device array of N ones (``(N, n_channels)`` when given)."""
        key = (np.dtype(dtype), n_channels)
        if key not in self._ones:
            shape = self.num_points if n_channels is None else (self.num_points, n_channels)
            self._ones[key] = dev.full(shape, 1, dtype)
        return self._ones[key]

    def _workspace(self, n_channels, dtype):
        key = (n_channels, np.dtype(dtype))
        if key not in self._work:
            shape = (self.num_vertices + 1, n_channels)
            self._work[key] = (dev.empty(shape, dtype), dev.empty(shape, dtype))
        return self._work[key]

    def splat_blur(self, values, pre, transpose=False):
        """Splat ``diag(pre) values`` and blur it (directions reversed for the transpose); returns the blurred
        vertex values ``(M + 1, C)`` (valid until the next filtering of as many channels)."""
        n_ch = values.shape[1]
        src, dst = self._workspace(n_ch, values.dtype)
        size = (self.num_vertices + 1) * n_ch
        dev.launch(K.splat, size, values, pre, self.weights, self.indptr, self.rows, self.dim + 1, src)
        d1 = self.dim + 1
        for jj in range(d1):
            dev.launch(K.blur_step, size, src, self.neighbours, d1 - 1 - jj if transpose else jj, dst)
            src, dst = dst, src
        return src

    def apply(self, values, out, *, pre, post, transpose=False, scale=1.0, accumulate=False):
        """``out = scale * diag(post) K diag(pre) values`` (``K^T`` with ``transpose``; ``accumulate`` adds to
        ``out``); returns the blurred vertex values for :meth:`slice_grad`."""
        buf = self.splat_blur(values, pre, transpose)
        dtype = values.dtype.type
        dev.launch(K.slice_, out.shape[0] * out.shape[1], buf, self.vertex, self.weights, dtype(self.alpha * scale),
                   post, out, accumulate)
        return buf

    def slice_grad(self, buf, other, post, scale, grad_w):
        """``grad_w[q] += alpha * scale * post[p] * <other[p], buf[vertex[q]]>`` (``grad_w``: ``N * (d + 1)``
        float64)."""
        dev.launch(K.slice_grad, grad_w.shape[0], buf, self.vertex, other, post, float(self.alpha * scale), grad_w)

    def weights_grad(self, x, g, grad_w, *, pre, post, transpose=False, scale=1.0):
        """Accumulate into ``grad_w`` the derivative w.r.t. the barycentric weights of ``l = scale * <g, diag(post)
        K diag(pre) x>`` (:meth:`crfcore.Lattice.weights_grad`)."""
        buf = self.splat_blur(x, pre, transpose)
        self.slice_grad(buf, g, post, scale, grad_w)
        buf = self.splat_blur(g, post, not transpose)
        self.slice_grad(buf, x, pre, scale, grad_w)

    def features_grad_from(self, grad_w, features):
        """``dl/dfeatures`` ``(N, d)`` float64 on the device from the weights' gradient ``grad_w``."""
        out = dev.empty((self.num_points, self.dim), np.float64)
        dev.launch(K.weights_to_features, self.num_points, features, self._scale, grad_w, out)
        return out
