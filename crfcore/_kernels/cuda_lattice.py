"""CUDA kernels of the permutohedral lattice (Numba's CUDA target, the ``numba-cuda`` package).

The same lattice as :mod:`crfcore._kernels.lattice` (Adams, Baek & Davis 2010), built in parallel over points:

* :func:`embed`, one thread per point: the enclosing simplex and barycentric weights in the CPU kernel's float64
  steps (every product through ``dmul_rn``, so that the GPU compiler cannot fuse a multiply and an add into one
  rounding: points on a simplex boundary, as pixel grids have, land in the simplex the CPU finds), and each vertex's
  packed key (the CPU's :func:`~crfcore.lattice.key_layout`) inserted into an open-addressing hash table with
  ``atomic.cas``. A slot ends up holding the *first* slot ``q = p * (d + 1) + r`` that uses its vertex
  (``atomic.min``), whoever won the insertion.
* Vertices are numbered in order of first use (:func:`first_flags` and an exclusive scan): the CPU lattice's
  numbering, whatever the scheduling.
* Splat is a gather over each vertex's slots in increasing order (a CSR made by a stable radix sort,
  :func:`radix_histogram` / :func:`radix_scatter`), so that no float is summed by atomics: results do not depend on
  thread scheduling, run to run.

These kernels do no checking: :mod:`crfcore._cuda.lattice` validates, allocates and launches them.
"""

import math

import numpy as np
from numba import config, cuda, float64, int64

#: The largest ``d + 1`` (feature dimensions plus one) the CUDA lattice takes: its per-thread arrays are this long.
MAX_D1 = 16
#: The most uint64 words a vertex key may take.
MAX_WORDS = 4
#: An empty hash-table slot (larger than every slot index, so ``atomic.min`` keeps the first user).
EMPTY = np.int32(0x7FFFFFFF)
#: Bits of the vertex number sorted per radix pass.
RADIX_BITS = 8
RADIX = 1 << RADIX_BITS

_M32 = np.uint64(0xFFFFFFFF)
_H1 = np.uint64(0x9E3779B1)
_H2 = np.uint64(0x85EBCA6B)
_S16 = np.uint64(16)
_S32 = np.uint64(32)

if config.ENABLE_CUDASIM:  # the simulator runs kernels as Python: a product rounds once anyway
    def _mul(a, b):
        return a * b
else:
    from numba.cuda.libdevice import dmul_rn as _mul


@cuda.jit(device=True, inline=True)
def _hash(qkeys, row, n_words):
    """Hash of the packed key ``qkeys[row]``: 32-bit products only (exact in uint64, the simulator included)."""
    h = np.uint64(0)
    for w in range(n_words):
        x = qkeys[row, w]
        h = ((h ^ (x & _M32)) * _H1) & _M32
        h = ((h ^ (x >> _S32)) * _H2) & _M32
    return h ^ (h >> _S16)


@cuda.jit(device=True, inline=True)
def _hash_key(key, n_words):
    """:func:`_hash` of a key held in a per-thread array."""
    h = np.uint64(0)
    for w in range(n_words):
        x = key[w]
        h = ((h ^ (x & _M32)) * _H1) & _M32
        h = ((h ^ (x >> _S32)) * _H2) & _M32
    return h ^ (h >> _S16)


@cuda.jit(device=True, inline=True)
def _simplex(features, scale, p, el, r0, rank):
    """The enclosing simplex of point ``p``: elevated coordinates ``el``, remainder-0 point ``r0`` and ``rank``
    (:func:`crfcore._kernels.lattice._simplex_block`, the same float64 operations in the same order)."""
    d = features.shape[1]
    d1 = d + 1
    inv_d1 = 1.0 / d1
    el0 = 0.0
    for j in range(d, 0, -1):
        cf = _mul(features[p, j - 1], scale[j - 1])
        el[j] = el0 - _mul(float64(j), cf)
        el0 = el0 + cf
    el[0] = el0
    total = int64(0)
    for i in range(d1):
        v = _mul(el[i], inv_d1)
        up = int64(math.ceil(v)) * d1
        down = int64(math.floor(v)) * d1
        x = up if up - el[i] < el[i] - down else down
        r0[i] = x
        total += x
        rank[i] = 0
    for i in range(d):
        for j in range(i + 1, d1):
            if el[i] - r0[i] < el[j] - r0[j]:
                rank[i] += 1
            else:
                rank[j] += 1
    shift = total // d1
    for i in range(d1):
        rk = rank[i] + shift
        fix = int64(0)
        if rk < 0:
            fix = int64(1)
        elif rk > d:
            fix = int64(-1)
        rank[i] = rk + fix * d1
        r0[i] += fix * d1


@cuda.jit(cache=True)
def embed(features, scale, lo, word, fshift, weights, qkeys, table, slot_of):
    """One thread per point: barycentric ``weights``, the packed key of each of its ``d + 1`` vertices
    (``qkeys[q]``) and the hash-table slot holding that vertex (``slot_of[q]``); ``table[slot]`` ends as the
    smallest ``q`` with that key."""
    n, d = features.shape
    for p in range(cuda.grid(1), n, cuda.gridsize(1)):
        d1 = d + 1
        n_words = qkeys.shape[1]
        mask = np.uint64(table.shape[0] - 1)
        el = cuda.local.array(MAX_D1, float64)
        r0 = cuda.local.array(MAX_D1, int64)
        rank = cuda.local.array(MAX_D1, int64)
        srt = cuda.local.array(MAX_D1, float64)
        _simplex(features, scale, p, el, r0, rank)
        inv_d1 = 1.0 / d1
        for i in range(d1):
            srt[rank[i]] = _mul(el[i] - r0[i], inv_d1)
        base = p * d1
        weights[base] = srt[d] + (1.0 - srt[0])
        for r in range(1, d1):
            weights[base + r] = srt[d - r] - srt[d - r + 1]
        for r in range(d1):
            q = base + r
            for w in range(n_words):
                qkeys[q, w] = np.uint64(0)
            # vertex r: r0 + r on every coordinate, d + 1 less on those ranked above d - r
            for k in range(d):
                c = r0[k] + r
                if rank[k] > d - r:
                    c -= d1
                qkeys[q, word[k]] += np.uint64(c - lo[k]) << fshift[k]
            cuda.threadfence()  # the key is visible before its index is
            h = _hash(qkeys, q, n_words) & mask
            while True:
                old = cuda.atomic.cas(table, h, EMPTY, np.int32(q))
                if old == EMPTY:
                    slot_of[q] = h
                    break
                # the winner's key was written before its index (its fence above); this fence orders the reads of
                # that key after the index was seen, so that they never come from a stale line of this SM's L1
                cuda.threadfence()
                same = True
                for w in range(n_words):
                    if qkeys[old, w] != qkeys[q, w]:
                        same = False
                if same:
                    cuda.atomic.min(table, h, np.int32(q))
                    slot_of[q] = h
                    break
                h = (h + np.uint64(1)) & mask


@cuda.jit(cache=True)
def first_flags(table, slot_of, flags):
    """``flags[q] = 1`` where slot ``q`` is its vertex's first use."""
    for q in range(cuda.grid(1), slot_of.shape[0], cuda.gridsize(1)):
        flags[q] = 1 if table[slot_of[q]] == q else 0


@cuda.jit(cache=True)
def scan_tiles(values, out, sums, tile):
    """Exclusive prefix sum within each tile of ``tile`` values (one thread a tile, in order); ``sums[t]``: the
    tile's total."""
    n = values.shape[0]
    for t in range(cuda.grid(1), sums.shape[0], cuda.gridsize(1)):
        acc = 0
        for i in range(t * tile, min(n, (t + 1) * tile)):
            x = values[i]
            out[i] = acc
            acc += x
        sums[t] = acc


@cuda.jit(cache=True)
def add_tile_offsets(out, offsets, tile):
    """``out[i] += offsets[i // tile]``: the tiles' exclusive prefix sums made global."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] += offsets[i // tile]


@cuda.jit(cache=True)
def vertex_ids(table, slot_of, first_index, vertex, first_of):
    """``vertex[q]``: the number of slot ``q``'s vertex (``first_index`` at its first use); ``first_of[v]``: the
    first slot of vertex ``v``."""
    for q in range(cuda.grid(1), slot_of.shape[0], cuda.gridsize(1)):
        first = table[slot_of[q]]
        v = first_index[first]
        vertex[q] = v
        if first == q:
            first_of[v] = q


@cuda.jit(cache=True)
def count_rows(vertex, counts):
    """``counts[v]``: the slots of vertex ``v`` (integer atomics: the same counts whatever the order)."""
    for q in range(cuda.grid(1), vertex.shape[0], cuda.gridsize(1)):
        cuda.atomic.add(counts, vertex[q], 1)


@cuda.jit(cache=True)
def radix_histogram(keys, shift, tile, n_tiles, hist):
    """Per tile (one thread, its values in order): how many keys have each digit, at ``hist[digit * n_tiles +
    tile]`` (digit-major, so an exclusive scan of ``hist`` gives every tile's first position per digit)."""
    n = keys.shape[0]
    for t in range(cuda.grid(1), n_tiles, cuda.gridsize(1)):
        for b in range(RADIX):
            hist[b * n_tiles + t] = 0
        for i in range(t * tile, min(n, (t + 1) * tile)):
            b = (keys[i] >> shift) & (RADIX - 1)
            hist[b * n_tiles + t] += 1


@cuda.jit(cache=True)
def radix_scatter(keys, values, shift, tile, n_tiles, offsets, keys_out, values_out):
    """A stable pass of the radix sort: each tile's keys, in order, to the positions ``offsets`` gives."""
    n = keys.shape[0]
    for t in range(cuda.grid(1), n_tiles, cuda.gridsize(1)):
        for i in range(t * tile, min(n, (t + 1) * tile)):
            b = (keys[i] >> shift) & (RADIX - 1)
            at = offsets[b * n_tiles + t]
            offsets[b * n_tiles + t] = at + 1
            keys_out[at] = keys[i]
            values_out[at] = values[i]


@cuda.jit(cache=True)
def blur_neighbours(qkeys, first_of, table, first_index, ones, word, fshift, out):
    """``out[j, v, 0/1]``: the vertex at ``v -/+ (1, ..., 1, -d, 1, ..., 1)`` along direction ``j`` (``-d`` at
    coordinate ``j``; for ``j == d`` the implied one), ``M`` where absent
    (:func:`crfcore._kernels.lattice.blur_neighbours`)."""
    d1, m, _ = out.shape
    for v in range(cuda.grid(1), m, cuda.gridsize(1)):
        d = d1 - 1
        n_words = qkeys.shape[1]
        mask = np.uint64(table.shape[0] - 1)
        key = cuda.local.array(MAX_WORDS, np.uint64)
        src = first_of[v]
        for j in range(d1):
            for side in range(2):
                for w in range(n_words):
                    if side == 0:
                        key[w] = qkeys[src, w] - ones[w]
                    else:
                        key[w] = qkeys[src, w] + ones[w]
                if j < d:
                    step = np.uint64(d1) << fshift[j]
                    if side == 0:
                        key[word[j]] = key[word[j]] + step
                    else:
                        key[word[j]] = key[word[j]] - step
                h = _hash_key(key, n_words) & mask
                found = m
                while True:
                    e = table[h]
                    if e == EMPTY:
                        break
                    same = True
                    for w in range(n_words):
                        if qkeys[e, w] != key[w]:
                            same = False
                    if same:
                        found = first_index[e]
                        break
                    h = (h + np.uint64(1)) & mask
                out[j, v, side] = found


@cuda.jit(cache=True)
def splat(values, pre, weights, indptr, rows, d1, buf):
    """``buf[v, k] = sum over the slots q of vertex v, in increasing order: weights[q] * (pre[p] * values[p, k])``
    (``p = q // (d + 1)``); one thread per vertex and channel, row ``M`` zeroed."""
    n_ch = values.shape[1]
    m = indptr.shape[0] - 1
    for i in range(cuda.grid(1), (m + 1) * n_ch, cuda.gridsize(1)):
        v = i // n_ch
        k = i - v * n_ch
        acc = values[0, 0] - values[0, 0]  # zero in the values' dtype
        if v < m:
            for e in range(indptr[v], indptr[v + 1]):
                q = rows[e]
                p = q // d1
                acc += weights[q] * (pre[p] * values[p, k])
        buf[v, k] = acc


@cuda.jit(cache=True)
def blur_step(src, neighbours, j, dst):
    """One blur direction ``j``: ``dst[v] = src[v] + (src[v-] + src[v+]) / 2`` (stencil [0.5, 1, 0.5]); row ``M``
    of ``dst`` is zeroed."""
    m = neighbours.shape[1]
    n_ch = src.shape[1]
    for i in range(cuda.grid(1), (m + 1) * n_ch, cuda.gridsize(1)):
        v = i // n_ch
        k = i - v * n_ch
        if v == m:
            dst[v, k] = 0
            continue
        a = neighbours[j, v, 0]
        b = neighbours[j, v, 1]
        dst[v, k] = src[v, k] + 0.5 * (src[a, k] + src[b, k])


@cuda.jit(cache=True)
def slice_(buf, vertex, weights, alpha, post, out, accumulate):
    """``out[p, k] = alpha * post[p] * sum_r weights[q] * buf[vertex[q], k]`` (``q = p * (d + 1) + r``), one thread
    per point and channel; ``accumulate`` adds to ``out``."""
    n, n_ch = out.shape
    for i in range(cuda.grid(1), n * n_ch, cuda.gridsize(1)):
        p = i // n_ch
        k = i - p * n_ch
        d1 = vertex.shape[0] // n
        acc = buf[0, 0] - buf[0, 0]
        for r in range(d1):
            q = p * d1 + r
            acc += weights[q] * buf[vertex[q], k]
        s = alpha * post[p]
        if accumulate:
            out[p, k] += s * acc
        else:
            out[p, k] = s * acc


@cuda.jit(cache=True)
def slice_grad(buf, vertex, other, post, scale, grad_w):
    """``grad_w[q] += scale * post[p] * <other[p], buf[vertex[q]]>``: a slice's derivative w.r.t. the barycentric
    weights (:func:`crfcore._kernels.lattice.slice_grad`), one thread per slot; ``grad_w`` float64."""
    n, n_ch = other.shape
    for q in range(cuda.grid(1), vertex.shape[0], cuda.gridsize(1)):
        d1 = vertex.shape[0] // n
        p = q // d1
        v = vertex[q]
        acc = 0.0
        for k in range(n_ch):
            acc += other[p, k] * buf[v, k]
        grad_w[q] += (scale * post[p]) * acc


@cuda.jit(cache=True)
def weights_to_features(features, scale, grad_w, out):
    """``out[p] = dl/df[p]`` from ``grad_w`` (``dl/d weights``), through the barycentric coordinates and the
    elevation of the simplex the construction found (:func:`crfcore._kernels.lattice.weights_to_features`)."""
    n, d = features.shape
    for p in range(cuda.grid(1), n, cuda.gridsize(1)):
        d1 = d + 1
        inv_d1 = 1.0 / d1
        el = cuda.local.array(MAX_D1, float64)
        r0 = cuda.local.array(MAX_D1, int64)
        rank = cuda.local.array(MAX_D1, int64)
        de = cuda.local.array(MAX_D1, float64)
        _simplex(features, scale, p, el, r0, rank)
        base = p * d1
        for i in range(d1):
            a = d - rank[i]
            b = a + 1 if a < d else 0
            de[i] = (grad_w[base + a] - grad_w[base + b]) * inv_d1
        run = 0.0
        for k in range(d):
            run += de[k]
            out[p, k] = scale[k] * (run - (k + 1) * de[k + 1])


@cuda.jit(cache=True)
def iota(out):
    """``out[i] = i``."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = i
