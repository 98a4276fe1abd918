"""Numba kernels of the permutohedral lattice (Adams, Baek & Davis 2010).

These kernels do no checking: :class:`crfcore.Lattice` validates inputs, allocates outputs and calls them.
Names follow the paper and Krähenbühl's ``permutohedral.cpp``: each point is *elevated* onto the hyperplane
``sum(x) = 0`` of R^(d+1), rounded to its closest remainder-0 lattice point ``rem0``, sorted (``rank``) to find
its enclosing simplex, and given ``d + 1`` *barycentric* weights on that simplex's vertices.

The lattice is stored in gather form so that every parallel loop writes only its own rows:

* ``offsets[p * (d + 1) + r]``: the lattice vertex of remainder ``r`` of point ``p``;
* ``indptr`` / ``entries``: CSR from lattice vertex to the ``p * (d + 1) + r`` slots that touch it (splat);
* ``neighbours[j, v]``: the two neighbours of vertex ``v`` along lattice direction ``j`` (blur), ``M`` (an
  all-zero row) where the neighbour does not exist.
"""

import numpy as np
from numba import njit, prange

from ._config import JIT, PJIT

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
    h = np.uint64(0x9E3779B97F4A7C15)
    for k in range(d):
        c = np.int64(key[k]) + s
        if k == j:
            c -= s * (d + 1)
        h = _mix(h ^ np.uint64(c & 0xFFFFFFFF))
    return h


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


@njit(**PJIT)
def embed(features, scale, n_chunks):
    """Elevate every point, find its simplex and barycentric weights (Adams et al. 2010, p. 5-10).

    Returns ``keys`` of shape ``(N * (d + 1), d)`` (the first ``d`` coordinates of each simplex vertex;
    the last is implied by ``sum == 0``) and ``weights`` of shape ``(N * (d + 1),)``.
    """
    n, d = features.shape
    d1 = d + 1
    keys = np.empty((n * d1, d), dtype=np.int32)
    weights = np.empty(n * d1, dtype=np.float64)
    chunk = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        elevated = np.empty(d1)
        rem0 = np.empty(d1, dtype=np.int64)
        rank = np.empty(d1, dtype=np.int64)
        bary = np.empty(d + 2)
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
                v = elevated[i] / d1
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
            for i in range(d):
                di = elevated[i] - rem0[i]
                for j in range(i + 1, d1):
                    if di < elevated[j] - rem0[j]:
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
                v = (elevated[i] - rem0[i]) / d1
                bary[d - rank[i]] += v
                bary[d - rank[i] + 1] -= v
            bary[0] += 1.0 + bary[d1]
            # the d + 1 vertices: rem0 plus the canonical simplex of each remainder
            for r in range(d1):
                q = p * d1 + r
                for k in range(d):
                    if rank[k] <= d - r:
                        keys[q, k] = rem0[k] + r
                    else:
                        keys[q, k] = rem0[k] + r - d1
                weights[q] = bary[r]
    return keys, weights


@njit(**JIT)
def insert(keys, capacity):
    """Deduplicate vertex keys with an open-addressing hash table, in input order (deterministic).

    Returns ``offsets`` (vertex index of each key), the unique keys ``(M, d)`` and the final hash table.
    ``capacity`` is the initial table size (a power of two); the table doubles when half full.
    """
    n_keys, d = keys.shape
    table = np.full(capacity, _EMPTY, dtype=np.int32)
    uniq = np.empty((max(16, capacity // 2), d), dtype=np.int32)
    offsets = np.empty(n_keys, dtype=np.int32)
    m = 0
    for q in range(n_keys):
        key = keys[q]
        mask = np.uint64(table.shape[0] - 1)
        h = _hash_shifted(key, 0, 0) & mask
        while True:
            e = table[h]
            if e < 0:
                if m == uniq.shape[0]:
                    grown = np.empty((2 * m, d), dtype=np.int32)
                    grown[:m] = uniq
                    uniq = grown
                uniq[m] = key
                table[h] = m
                offsets[q] = m
                m += 1
                if 2 * m > table.shape[0]:
                    table = np.full(2 * table.shape[0], _EMPTY, dtype=np.int32)
                    mask2 = np.uint64(table.shape[0] - 1)
                    for e2 in range(m):
                        h2 = _hash_shifted(uniq[e2], 0, 0) & mask2
                        while table[h2] >= 0:
                            h2 = (h2 + np.uint64(1)) & mask2
                        table[h2] = e2
                break
            if _equal_shifted(uniq[e], key, 0, 0):
                offsets[q] = e
                break
            h = (h + np.uint64(1)) & mask
    return offsets, uniq[:m].copy(), table


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
def gather_index(offsets, m):
    """CSR (``indptr``, ``entries``) from each lattice vertex to the point slots that splat onto it."""
    indptr = np.zeros(m + 1, dtype=np.int64)
    for q in range(offsets.shape[0]):
        indptr[offsets[q] + 1] += 1
    for v in range(m):
        indptr[v + 1] += indptr[v]
    fill = indptr[:m].copy()
    entries = np.empty(offsets.shape[0], dtype=np.int64)
    for q in range(offsets.shape[0]):
        v = offsets[q]
        entries[fill[v]] = q
        fill[v] += 1
    return indptr, entries


@njit(**PJIT)
def splat(values, pre, weights, indptr, entries, d1, out):
    """``out[v] = sum over slots q=(p, r) of v: weights[q] * pre[p] * values[p]``; row ``M`` is zeroed."""
    m = indptr.shape[0] - 1
    n_ch = values.shape[1]
    for v in prange(m):
        for c in range(n_ch):
            out[v, c] = 0.0
        for e in range(indptr[v], indptr[v + 1]):
            q = entries[e]
            p = q // d1
            w = weights[q] * pre[p]
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
