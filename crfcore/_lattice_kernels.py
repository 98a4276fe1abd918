"""Numba kernels of the permutohedral lattice (Adams, Baek & Davis 2010).

These kernels do no checking: :class:`crfcore.Lattice` validates inputs, allocates outputs and calls them.
Names follow the paper and Krähenbühl's ``permutohedral.cpp``: each point is *elevated* onto the hyperplane
``sum(x) = 0`` of R^(d+1), rounded to its closest remainder-0 lattice point ``rem0``, sorted (``rank``) to find
its enclosing simplex, and given ``d + 1`` *barycentric* weights on that simplex's vertices.

The lattice is stored in gather form so that every parallel loop writes only its own rows:

* ``offsets[p * (d + 1) + r]``: the lattice vertex of remainder ``r`` of point ``p``;
* ``indptr`` / ``points``: CSR from lattice vertex to the points that touch it (splat), with their weights;
* ``neighbours[j, v]``: the two neighbours of vertex ``v`` along lattice direction ``j`` (blur), ``M`` (an
  all-zero row) where the neighbour does not exist.
"""

import numpy as np
from numba import njit, prange

from ._config import JIT, PJIT, PJIT_EXACT

_EMPTY = np.int32(-1)


@njit(**JIT)
def _mix(h):
    # splitmix64 finaliser: spreads the bits of a uint64
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@njit(**JIT)
def _hash_shifted(key, j, s):
    """Hash of ``key`` moved by ``s`` (+1/-1/0) along lattice direction ``j`` (``j == d``: all +s)."""
    d = key.shape[0]
    h = np.uint64(0xCBF29CE484222325)
    for k in range(d):
        c = np.int64(key[k]) + s
        if k == j:
            c -= s * (d + 1)
        h = (h ^ np.uint64(c & 0xFFFFFFFF)) * np.uint64(0x100000001B3)
    return _mix(h)


@njit(**JIT)
def _equal_shifted(stored, key, j, s):
    d = key.shape[0]
    for k in range(d):
        c = np.int64(key[k]) + s
        if k == j:
            c -= s * (d + 1)
        if stored[k] != c:
            return False
    return True


@njit(**JIT)
def _find(table, uniq, key, j, s):
    """Index of the vertex ``key`` shifted along ``j`` by ``s``, or -1 when it is not in the lattice."""
    mask = np.uint64(table.shape[0] - 1)
    h = _hash_shifted(key, j, s) & mask
    while True:
        e = table[h]
        if e < 0:
            return -1
        if _equal_shifted(uniq[e], key, j, s):
            return e
        h = (h + np.uint64(1)) & mask


@njit(**JIT)
def _probe_insert(table, keys, base, m, key):
    """Find ``key`` among ``keys[base:base + m]`` through ``table`` or append it; returns (index, new m)."""
    mask = np.uint64(table.shape[0] - 1)
    h = _hash_shifted(key, 0, 0) & mask
    d = key.shape[0]
    while True:
        e = table[h]
        if e < 0:
            keys[base + m] = key
            table[h] = m
            return m, m + 1
        same = True
        for k in range(d):
            if keys[base + e, k] != key[k]:
                same = False
                break
        if same:
            return e, m
        h = (h + np.uint64(1)) & mask


@njit(**PJIT_EXACT)
def embed(features, scale, chunk, table_size):
    """Elevate every point, find its simplex and barycentric weights (Adams et al. 2010, p. 5-10), and
    deduplicate the simplex vertices within each chunk of ``chunk`` points (in parallel over chunks).

    Consecutive points in the same simplex (common: neighbouring pixels) reuse the previous point's vertices
    without hashing. Returns ``local_keys`` (chunk ``c``'s unique vertex keys at rows ``c * chunk * (d + 1)``
    onwards; the key is a vertex's first ``d`` coordinates, the last being implied by ``sum == 0``), their
    ``counts`` per chunk, ``offsets`` (each slot's vertex index *within its chunk*) and ``weights``.
    """
    n, d = features.shape
    d1 = d + 1
    n_chunks = (n + chunk - 1) // chunk
    inv_d1 = 1.0 / d1
    local_keys = np.empty((n * d1, d), dtype=np.int32)
    counts = np.zeros(n_chunks, dtype=np.int64)
    offsets = np.empty(n * d1, dtype=np.int32)
    weights = np.empty(n * d1, dtype=np.float64)
    for c in prange(n_chunks):
        table = np.full(table_size, _EMPTY, dtype=np.int32)
        elevated = np.empty(d1)
        resid = np.empty(d1)
        rem0 = np.empty(d1, dtype=np.int64)
        rank = np.empty(d1, dtype=np.int64)
        prev_rem0 = np.empty(d1, dtype=np.int64)
        prev_rank = np.empty(d1, dtype=np.int64)
        bary = np.empty(d + 2)
        key = np.empty(d, dtype=np.int32)
        base = c * chunk * d1
        m = 0
        for p in range(c * chunk, min(n, (c + 1) * chunk)):
            # elevation y = E f (p. 5): cumulative sums of the scaled features
            sm = 0.0
            for j in range(d, 0, -1):
                cf = features[p, j - 1] * scale[j - 1]
                elevated[j] = sm - j * cf
                sm += cf
            elevated[0] = sm
            # closest remainder-0 point by rounding each coordinate to a multiple of d + 1
            total = 0
            for i in range(d1):
                v = elevated[i] * inv_d1
                up = np.int64(np.ceil(v)) * d1
                down = np.int64(np.floor(v)) * d1
                if up - elevated[i] < elevated[i] - down:
                    rem0[i] = up
                else:
                    rem0[i] = down
                total += rem0[i]
            total //= d1
            # rank of each coordinate's residual: the enclosing simplex
            for i in range(d1):
                rank[i] = 0
                resid[i] = elevated[i] - rem0[i]
            for i in range(d):
                di = resid[i]
                for j in range(i + 1, d1):
                    if di < resid[j]:
                        rank[i] += 1
                    else:
                        rank[j] += 1
            # bring the point back onto the plane when the rounded coordinates do not sum to zero
            for i in range(d1):
                rank[i] += total
                if rank[i] < 0:
                    rank[i] += d1
                    rem0[i] += d1
                elif rank[i] > d:
                    rank[i] -= d1
                    rem0[i] -= d1
            # barycentric coordinates (p. 10)
            for i in range(d + 2):
                bary[i] = 0.0
            for i in range(d1):
                v = (elevated[i] - rem0[i]) * inv_d1
                bary[d - rank[i]] += v
                bary[d - rank[i] + 1] -= v
            bary[0] += 1.0 + bary[d1]
            same = p > c * chunk
            if same:
                for i in range(d1):
                    if rem0[i] != prev_rem0[i] or rank[i] != prev_rank[i]:
                        same = False
                        break
            # the d + 1 vertices: rem0 plus the canonical simplex of each remainder
            for r in range(d1):
                q = p * d1 + r
                weights[q] = bary[r]
                if same:
                    offsets[q] = offsets[q - d1]
                    continue
                for k in range(d):
                    if rank[k] <= d - r:
                        key[k] = rem0[k] + r
                    else:
                        key[k] = rem0[k] + r - d1
                offsets[q], m = _probe_insert(table, local_keys, base, m, key)
            for i in range(d1):
                prev_rem0[i] = rem0[i]
                prev_rank[i] = rank[i]
        counts[c] = m
    return local_keys, counts, offsets, weights


@njit(**JIT)
def merge(local_keys, counts, stride, capacity):
    """Merge the chunks' unique keys into one hash table, chunk by chunk (deterministic numbering).

    Returns the unique keys ``(M, d)``, the table (a power of two, at most half full) and ``remap``:
    ``remap[c * stride + e]`` is the global index of chunk ``c``'s local vertex ``e``.
    """
    d = local_keys.shape[1]
    table = np.full(capacity, _EMPTY, dtype=np.int32)
    uniq = np.empty((capacity // 2 + 1, d), dtype=np.int32)  # m <= capacity / 2 before the table grows
    remap = np.empty(local_keys.shape[0], dtype=np.int32)
    m = 0
    for c in range(counts.shape[0]):
        for e in range(counts[c]):
            key = local_keys[c * stride + e]
            g, m_new = _probe_insert(table, uniq, 0, m, key)
            remap[c * stride + e] = g
            if m_new > m:
                m = m_new
                if 2 * m > table.shape[0]:  # grow: double the table, rehash, and the key store with it
                    table = np.full(2 * table.shape[0], _EMPTY, dtype=np.int32)
                    mask = np.uint64(table.shape[0] - 1)
                    for e2 in range(m):
                        h = _hash_shifted(uniq[e2], 0, 0) & mask
                        while table[h] >= 0:
                            h = (h + np.uint64(1)) & mask
                        table[h] = e2
                    grown = np.empty((table.shape[0] // 2 + 1, d), dtype=np.int32)
                    grown[:m] = uniq[:m]
                    uniq = grown
    return uniq[:m].copy(), table, remap


@njit(**PJIT)
def remap_offsets(offsets, remap, chunk, d1):
    """Chunk-local vertex indices to global ones, in place."""
    stride = chunk * d1
    for q in prange(offsets.shape[0]):
        c = (q // d1) // chunk
        offsets[q] = remap[c * stride + offsets[q]]


@njit(**PJIT)
def blur_neighbours(table, uniq):
    """``neighbours[j, v, 0/1]``: the vertex at ``v -/+ (1, ..., 1, -d, 1, ..., 1)`` along direction ``j``."""
    m, d = uniq.shape
    out = np.empty((d + 1, m, 2), dtype=np.int32)
    for v in prange(m):
        key = uniq[v]
        for j in range(d + 1):
            for side in range(2):
                s = 1 if side == 0 else -1
                e = _find(table, uniq, key, j, s)
                out[j, v, side] = m if e < 0 else e
    return out


@njit(**JIT)
def gather_index(offsets, weights, m, d1):
    """CSR from each lattice vertex to the points that splat onto it: ``indptr`` and, per entry, the point
    (``points``) and the weight of its slot (``csr_weights``), in slot order within each vertex."""
    indptr = np.zeros(m + 1, dtype=np.int64)
    for q in range(offsets.shape[0]):
        indptr[offsets[q] + 1] += 1
    for v in range(m):
        indptr[v + 1] += indptr[v]
    fill = indptr[:m].copy()
    points = np.empty(offsets.shape[0], dtype=np.int32)
    csr_weights = np.empty(offsets.shape[0], dtype=weights.dtype)
    for q in range(offsets.shape[0]):
        v = offsets[q]
        e = fill[v]
        points[e] = q // d1
        csr_weights[e] = weights[q]
        fill[v] = e + 1
    return indptr, points, csr_weights


@njit(**PJIT)
def splat(values, pre, csr_weights, indptr, points, out):
    """``out[v] = sum over the entries e of v: csr_weights[e] * pre[p] * values[p]`` with ``p = points[e]``;
    row ``M`` is zeroed. Gather form: each vertex is written by one thread only, in a fixed order."""
    m = indptr.shape[0] - 1
    n_ch = values.shape[1]
    for v in prange(m):
        for c in range(n_ch):
            out[v, c] = 0.0
        for e in range(indptr[v], indptr[v + 1]):
            p = points[e]
            w = csr_weights[e] * pre[p]
            for c in range(n_ch):
                out[v, c] += w * values[p, c]
    for c in range(n_ch):
        out[m, c] = 0.0


@njit(**PJIT)
def blur(src, nbrs, dst):
    """One blur direction, stencil [0.5, 1, 0.5]: ``dst[v] = src[v] + (src[v-] + src[v+]) / 2``."""
    m = nbrs.shape[0]
    n_ch = src.shape[1]
    for v in prange(m):
        a = nbrs[v, 0]
        b = nbrs[v, 1]
        for c in range(n_ch):
            dst[v, c] = src[v, c] + 0.5 * (src[a, c] + src[b, c])
    for c in range(n_ch):
        dst[m, c] = 0.0


@njit(**PJIT)
def slice_(lattice_values, offsets, weights, alpha, post, d1, out):
    """``out[p] = alpha * post[p] * sum_r weights[p, r] * lattice_values[offsets[p, r]]``."""
    n = out.shape[0]
    n_ch = out.shape[1]
    for p in prange(n):
        for c in range(n_ch):
            out[p, c] = 0.0
        for r in range(d1):
            q = p * d1 + r
            w = weights[q]
            v = offsets[q]
            for c in range(n_ch):
                out[p, c] += w * lattice_values[v, c]
        s = alpha * post[p]
        for c in range(n_ch):
            out[p, c] *= s
