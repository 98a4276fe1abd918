"""Numba kernels of the permutohedral lattice (Adams, Baek & Davis 2010).

These kernels do no checking: :class:`crfcore.Lattice` validates inputs, allocates outputs and calls them.
Names follow the paper and Krähenbühl's ``permutohedral.cpp``: each point is *elevated* onto the hyperplane
``sum(x) = 0`` of R^(d+1), rounded to its closest remainder-0 lattice point ``rem0``, sorted (``rank``) to find
its enclosing simplex, and given ``d + 1`` *barycentric* weights on that simplex's vertices.

**Keys.** A vertex is identified by its first ``d`` integer coordinates (the last is implied by ``sum == 0``),
packed into ``n_words`` uint64 words: coordinate ``k`` minus ``lo[k]`` sits in ``bits`` bits of word
``k // per_word``. ``lo`` and ``bits`` leave a margin around every coordinate a vertex or a blur neighbour can
take, so moving a vertex (``+1`` on all coordinates, ``-(d + 1)`` on one) is a few integer additions on the packed
words that never carry from one field into the next. Equal keys are equal vertices; one hash table probe
compares a word or two.

**Chunks.** Points are cut into chunks of ``chunk`` consecutive points, each with its own *local* numbering of the
vertices it touches (in parallel over chunks, in order within a chunk, so nothing depends on the thread count):

* ``offsets[p * (d + 1) + r]``: chunk-local row of the vertex of remainder ``r`` of point ``p``;
* ``starts[c]``: chunk ``c``'s first row in the stack of all chunks' local rows;
* ``remap[i]``: the global vertex of local row ``i``; ``indptr`` / ``rows``: its inverse (CSR, vertex -> rows);
* ``neighbours[j, v]``: the two neighbours of vertex ``v`` along lattice direction ``j`` (blur), ``M`` (an
  all-zero row) where the neighbour does not exist.

Filtering is then: splat each chunk into its local rows (scatter within a chunk: cache-resident, no races), sum
the local rows of each vertex (``gather_rows``), blur, copy the blurred vertices back to the local rows
(``scatter_rows``) and slice from them.
"""

import numpy as np
from numba import njit, prange

from .config import JIT, JIT_EXACT, PJIT, PJIT_EXACT

_EMPTY = np.int32(-1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FOLD = np.uint64(29)
_ONE = np.uint64(1)
#: Points per block of the vectorised part of the embedding (coordinates in SIMD lanes).
_BLOCK = 128


@njit(inline="always", **JIT)
def _copy(dst, src, n):
    """``dst[:n] = src[:n]`` element by element: an array assignment would compile Numba's shape-checking error
    messages (string formatting), several seconds of the first call."""
    for i in range(n):
        dst[i] = src[i]


@njit(inline="always", **JIT)
def _slot(key, shift):
    """Table slot of a packed key: fold the words, multiply by the golden ratio, keep the top bits."""
    h = key[0]
    for w in range(1, key.shape[0]):
        h = ((h ^ (h >> _FOLD)) * _GOLDEN) ^ key[w]
    h ^= h >> _FOLD
    return (h * _GOLDEN) >> shift


@njit(inline="always", **JIT)
def _slot1(k1, shift):
    """:func:`_slot` of a one-word key, on a scalar (the same hash)."""
    return ((k1 ^ (k1 >> _FOLD)) * _GOLDEN) >> shift


@njit(inline="always", **JIT)
def _probe1(tkeys, tids, k1, h, mask):
    """From slot ``h`` on, the slot holding the one-word key ``k1`` or the empty one where it goes, and the id
    there (-1: absent)."""
    e = tids[h]
    while e >= 0 and tkeys[h, 0] != k1:
        h = (h + _ONE) & mask
        e = tids[h]
    return h, e


@njit(inline="always", **JIT)
def _lookup(tkeys, tids, key, shift):
    """The slot of ``key`` in an open-addressing table: the one holding it, or the empty one where it goes."""
    mask = np.uint64(tids.shape[0] - 1)
    h = _slot(key, shift)
    while True:
        if tids[h] < 0:
            return h
        same = True
        for w in range(key.shape[0]):
            if tkeys[h, w] != key[w]:
                same = False
                break
        if same:
            return h
        h = (h + _ONE) & mask


@njit(**JIT)
def _table(store, m, capacity):
    """A table of ``capacity`` slots (a power of two) holding the keys ``store[:m]``, numbered by row."""
    tkeys = np.empty((capacity, store.shape[1]), dtype=np.uint64)
    tids = np.full(capacity, _EMPTY, dtype=np.int32)
    log2 = 0
    while (1 << log2) < capacity:
        log2 += 1
    shift = np.uint64(64 - log2)
    for e in range(m):
        h = _lookup(tkeys, tids, store[e], shift)
        _copy(tkeys[h], store[e], store.shape[1])
        tids[h] = e
    return tkeys, tids, shift


@njit(**JIT)
def key_fields(d, bits, per_word, n_words):
    """Word index and bit shift of each stored coordinate, and the packed ``+1 on every coordinate``."""
    word = np.empty(d, dtype=np.int64)
    shift = np.empty(d, dtype=np.uint64)
    ones = np.zeros(n_words, dtype=np.uint64)
    for k in range(d):
        word[k] = k // per_word
        shift[k] = np.uint64((k % per_word) * bits)
        ones[word[k]] += _ONE << shift[k]
    return word, shift, ones


@njit(**JIT)
def feature_range(features):
    """Per-feature minimum and maximum, and whether every value is finite: one pass over the points.

    NumPy's ``min(axis=0)`` on an ``(N, d)`` array with a few columns takes ~70 ns a point (3.4 ms at 224x224,
    70 ms at 1024x1024, for each of min and max): more than half the spatial lattice's build. Finiteness is read
    from a sum of ``x * 0``, which is NaN exactly when some ``x`` is NaN or infinite, so the pass has no branches.
    """
    n, d = features.shape
    fmin = features[0].copy()
    fmax = features[0].copy()
    acc = 0.0
    for p in range(n):
        for k in range(d):
            x = features[p, k]
            fmin[k] = min(fmin[k], x)
            fmax[k] = max(fmax[k], x)
            acc += x * 0.0
    return fmin, fmax, np.isfinite(acc)


@njit(inline="always", **JIT_EXACT)
def _simplex_block(features, scale, b0, nb, el, r0, rank):
    """Elevate points ``b0 .. b0 + nb - 1`` (``el``), round them to their remainder-0 point (``r0``) and rank
    their residuals (``rank``): the enclosing simplex (Adams et al. 2010, p. 5-10), coordinate by coordinate over
    the block's points (SIMD lanes). ``r0`` and ``rank`` are float64 arrays holding integers (exact far beyond the
    lattice's coordinate bound): with int64 ones the loops did not vectorise (AVX2 has no conversion between float64
    and int64), and the embedding took 1.25-1.5x as long.

    The float64 arithmetic is plain IEEE in the paper's order, which the pure-TensorFlow lattice repeats step by
    step, so points on a simplex boundary land in the same simplex in both. The feature gradient calls it again
    and finds the very simplex the construction found.
    """
    d = features.shape[1]
    d1 = d + 1
    inv_d1 = 1.0 / d1
    total = np.zeros(nb)
    # elevation y = E f (p. 5): cumulative sums of the scaled features
    for t in range(nb):
        el[0, t] = 0.0
    for j in range(d, 0, -1):
        sj = scale[j - 1]
        for t in range(nb):
            cf = features[b0 + t, j - 1] * sj
            el[j, t] = el[0, t] - j * cf
            el[0, t] = el[0, t] + cf
    # closest remainder-0 point by rounding each coordinate to a multiple of d + 1 (integers held exactly in
    # float64: a float to int64 conversion does not vectorise on AVX2, and these loops then would not either)
    for i in range(d1):
        for t in range(nb):
            v = el[i, t] * inv_d1
            up = np.ceil(v) * d1
            down = np.floor(v) * d1
            x = up if up - el[i, t] < el[i, t] - down else down
            r0[i, t] = x
            total[t] += x
            rank[i, t] = 0.0
    # rank of each coordinate's residual: the enclosing simplex
    for i in range(d):
        for j in range(i + 1, d1):
            for t in range(nb):
                lt = 1.0 if el[i, t] - r0[i, t] < el[j, t] - r0[j, t] else 0.0
                rank[i, t] += lt
                rank[j, t] += 1.0 - lt
    # bring the point back onto the plane when the rounded coordinates do not sum to zero
    for i in range(d1):
        for t in range(nb):
            rk = rank[i, t] + total[t] / d1
            fix = (1.0 if rk < 0 else 0.0) - (1.0 if rk > d else 0.0)
            rank[i, t] = rk + fix * d1
            r0[i, t] += fix * d1


@njit(**JIT_EXACT)
def _elevate_block(features, scale, b0, nb, first, el, r0, rank, srt, same, prev, weights):
    """The simplex of points ``b0 .. b0 + nb - 1`` (:func:`_simplex_block`) and their barycentric ``weights``.

    ``same[t]``: point ``t`` lies in the simplex of the point before it (in its chunk, which starts at
    ``first``); ``prev`` carries the last point's simplex from block to block.
    """
    d = features.shape[1]
    d1 = d + 1
    inv_d1 = 1.0 / d1
    _simplex_block(features, scale, b0, nb, el, r0, rank)
    # barycentric coordinates (p. 10) from the residuals sorted by rank: the vertex of remainder r weighs
    # srt[d - r] - srt[d - r + 1], and vertex 0 takes srt[d] + (1 - srt[0])
    for i in range(d1):
        for t in range(nb):
            srt[np.int64(rank[i, t]), t] = (el[i, t] - r0[i, t]) * inv_d1
    for t in range(nb):
        q = (b0 + t) * d1
        weights[q] = srt[d, t] + (1.0 - srt[0, t])
        for r in range(1, d1):
            weights[q + r] = srt[d - r, t] - srt[d - r + 1, t]
    # consecutive points in the same simplex (neighbouring pixels) reuse the previous point's vertices
    for t in range(nb):
        same[t] = True
    for i in range(d1):
        same[0] &= r0[i, 0] == prev[0, i] and rank[i, 0] == prev[1, i]
        for t in range(1, nb):
            same[t] &= r0[i, t] == r0[i, t - 1] and rank[i, t] == rank[i, t - 1]
        prev[0, i] = r0[i, nb - 1]
        prev[1, i] = rank[i, nb - 1]
    same[0] &= b0 > first


@njit(inline="always", **JIT_EXACT)
def _one_word_keys(r0, rank, nb, lo, fields, vkeys):
    """``vkeys[r, t]``: the one-word key of the vertex of remainder ``r`` of the block's point ``t``, for all points
    at once (SIMD lanes; :func:`_block_vertices` then only probes). The vertex of remainder ``r`` is ``rem0`` plus
    ``r`` on every coordinate, less ``d + 1`` on each coordinate ranked above ``d - r``.

    Coordinates go through int32 (they fit: ``crfcore.lattice._MAX_COORD``), whose conversion from float64
    vectorises on AVX2 where int64's does not; the subtraction of ``lo`` is in int64 (the field may need 31 bits).
    """
    d1 = r0.shape[0]
    d = d1 - 1
    _, fshift, ones = fields
    for t in range(nb):
        vkeys[0, t] = 0
    for k in range(d):
        lk = lo[k]
        sk = fshift[k]
        for t in range(nb):
            vkeys[0, t] += np.uint64(np.int64(np.int32(r0[k, t])) - lk) << sk
    for r in range(1, d1):
        step = np.uint64(r) * ones[0]
        for t in range(nb):
            vkeys[r, t] = vkeys[0, t] + step
    for i in range(d):
        down = np.uint64(d1) << fshift[i]
        zero = down - down
        for r in range(1, d1):
            above = d - r
            for t in range(nb):
                vkeys[r, t] -= down if rank[i, t] > above else zero


@njit(**JIT_EXACT)
def _block_vertices(b0, t, nb, el, r0, rank, same, lo, fields, vkeys, offsets, store, m, tkeys, tids, shift):
    """Chunk-local vertices of the block's points ``t, t + 1, ...``, numbered in order of first use.

    Stops before a point that could fill the hash table past a quarter (few collisions), returning ``(t, m)``
    (the next point and the number of vertices so far) so the caller can grow the table and call again;
    ``t == nb`` when done. The table is never reassigned in here (that kept LLVM from keeping it in
    registers: 2x slower).
    """
    d1 = el.shape[0]
    d = d1 - 1
    word, fshift, ones = fields
    n_words = store.shape[1]
    mask = np.uint64(tids.shape[0] - 1)
    inverse = np.empty(d1, dtype=np.int64)
    key = np.empty(n_words, dtype=np.uint64)
    vk = np.empty(d1, dtype=np.uint64)
    vh = np.empty(d1, dtype=np.uint64)
    while t < nb:
        if 4 * (m + d1) > tids.shape[0]:
            return t, m
        p = b0 + t
        t += 1
        if same[t - 1]:
            for r in range(d1):
                offsets[p * d1 + r] = offsets[(p - 1) * d1 + r]
            continue
        if n_words == 1:  # the keys are in vkeys (_one_word_keys)
            for r in range(d1):
                vk[r] = vkeys[r, t - 1]
                vh[r] = _slot1(vk[r], shift)
            for r in range(d1):
                k1 = vk[r]
                h, e = _probe1(tkeys, tids, k1, vh[r], mask)
                if e < 0:
                    e = m
                    tkeys[h, 0] = k1
                    tids[h] = m
                    store[m, 0] = k1
                    m += 1
                offsets[p * d1 + r] = e
            continue
        for i in range(d1):
            inverse[np.int64(rank[i, t - 1])] = i
        # the d + 1 vertices: rem0, then +1 on every coordinate and -(d + 1) on the one ranked d - r
        for w in range(n_words):
            key[w] = 0
        for k in range(d):
            key[word[k]] += np.uint64(np.int64(r0[k, t - 1]) - lo[k]) << fshift[k]
        for r in range(d1):
            h = _lookup(tkeys, tids, key, shift)
            e = tids[h]
            if e < 0:
                e = m
                _copy(tkeys[h], key, n_words)
                tids[h] = m
                _copy(store[m], key, n_words)
                m += 1
            offsets[p * d1 + r] = e
            for w in range(n_words):
                key[w] += ones[w]
            k = inverse[d - r]
            if k < d:
                key[word[k]] -= np.uint64(d1) << fshift[k]
    return t, m


@njit(**JIT_EXACT)
def embed_chunk(features, scale, lo, fields, chunk, c, ci, offsets, weights, keys, counts):
    """Embed the points of chunk ``c``, the ``ci``-th of its wave (serial: chunks run on several threads at once,
    :func:`crfcore._runtime.parallel.spread`, each writing only its own rows).

    Writes each point's barycentric ``weights`` and chunk-local vertex ``offsets``, the chunk's unique vertex keys
    in order of first use at ``keys[ci * chunk * (d + 1):]`` and their number at ``counts[c]``.
    """
    n, d = features.shape
    d1 = d + 1
    stride = chunk * d1
    store = keys[ci * stride:(ci + 1) * stride]
    capacity = np.int64(8192)  # np.int64(...): a literal would compile a second specialisation (seconds)
    tkeys, tids, shift = _table(store, np.int64(0), capacity)
    el = np.empty((d1, _BLOCK))
    r0 = np.empty((d1, _BLOCK))
    rank = np.empty((d1, _BLOCK))
    prev = np.empty((2, d1))
    srt = np.empty((d1, _BLOCK))
    same = np.empty(_BLOCK, dtype=np.bool_)
    one_word = keys.shape[1] == 1
    vkeys = np.empty((d1, _BLOCK if one_word else 0), dtype=np.uint64)
    m = np.int64(0)
    first = c * chunk
    end = min(n, first + chunk)
    for b0 in range(first, end, _BLOCK):
        nb = min(_BLOCK, end - b0)
        _elevate_block(features, scale, b0, nb, first, el, r0, rank, srt, same, prev, weights)
        if one_word:
            _one_word_keys(r0, rank, nb, lo, fields, vkeys)
        t = np.int64(0)
        while True:
            t, m = _block_vertices(b0, t, nb, el, r0, rank, same, lo, fields, vkeys, offsets, store, m, tkeys,
                                   tids, shift)
            if t == nb:
                break
            capacity *= 2
            tkeys, tids, shift = _table(store, m, capacity)
    counts[c] = m


@njit(**JIT_EXACT)
def _merge_keys(chunk_keys, e, uniq, m, tkeys, tids, shift, remap, rows):
    """Global vertex of each of a chunk's keys from ``e`` on (``remap[rows + e]``), new ones appended to ``uniq``.

    Stops before the table would fill past half, returning ``(e, m)`` so the caller can grow it and call
    again; ``e == len(chunk_keys)`` when done. Like :func:`_block_vertices`, it never reassigns the table.
    """
    n_words = chunk_keys.shape[1]
    mask = np.uint64(tids.shape[0] - 1)
    if n_words == 1 and e < chunk_keys.shape[0]:
        # touch every slot first: independent loads overlap their cache misses (the table outgrows the caches
        # on large images), so the probes below mostly hit the cache
        touched = np.uint64(0)
        for i in range(e, chunk_keys.shape[0]):
            k1 = chunk_keys[i, 0]
            h = _slot1(k1, shift)
            touched += tkeys[h, 0] + np.uint64(tids[h])
        remap[rows + e] = np.int32(touched & _ONE)  # keeps the loads alive; overwritten below
    while e < chunk_keys.shape[0]:
        if 2 * (m + 1) > tids.shape[0]:
            return e, m
        if n_words == 1:
            k1 = chunk_keys[e, 0]
            h, v = _probe1(tkeys, tids, k1, _slot1(k1, shift), mask)
        else:
            h = _lookup(tkeys, tids, chunk_keys[e], shift)
            v = tids[h]
        if v < 0:
            v = m
            for w in range(n_words):
                uniq[m, w] = chunk_keys[e, w]
                tkeys[h, w] = chunk_keys[e, w]
            tids[h] = m
            m += 1
        remap[rows + e] = v
        e += 1
    return e, m


@njit(**JIT_EXACT)
def new_tables(n, d1, n_chunks, wave, stride, n_words):
    """The buffers :func:`merge_wave` fills: ``counts``, the wave's ``keys``, ``starts``, ``remap``, the unique keys
    and the global hash table (``tkeys``, ``tids``, ``shift``)."""
    counts = np.zeros(n_chunks, dtype=np.int64)
    keys = np.empty((wave * stride, n_words), dtype=np.uint64)
    starts = np.zeros(n_chunks + 1, dtype=np.int64)
    remap = np.empty(max(16, n * d1 // 4), dtype=np.int32)
    capacity = np.int64(1 << 12)  # np.int64(...): see embed_chunk
    uniq = np.empty((capacity // 2 + 1, n_words), dtype=np.uint64)
    tkeys, tids, shift = _table(uniq, np.int64(0), capacity)
    return counts, keys, starts, remap, uniq, tkeys, tids, shift


@njit(**JIT_EXACT)
def merge_wave(c0, c1, stride, keys, counts, starts, remap, uniq, m, tkeys, tids, shift):
    """Number the unique vertices of chunks ``c0 .. c1 - 1`` (just embedded by :func:`embed_chunk`) globally, in chunk
    order (serial, so the numbering is the same whatever the thread count).

    Returns ``(remap, uniq, m, tkeys, tids, shift)``: the arrays grow (are replaced) when they fill.
    """
    n_words = uniq.shape[1]
    for c in range(c0, c1):
        starts[c + 1] = starts[c] + counts[c]
        if starts[c + 1] > remap.shape[0]:
            grown = np.empty(max(2 * remap.shape[0], starts[c + 1]), dtype=np.int32)
            _copy(grown, remap, starts[c])
            remap = grown
        chunk_keys = keys[(c - c0) * stride:(c - c0) * stride + counts[c]]
        e = np.int64(0)
        while True:
            e, m = _merge_keys(chunk_keys, e, uniq, m, tkeys, tids, shift, remap, starts[c])
            if e == chunk_keys.shape[0]:
                break
            capacity = np.int64(2 * tids.shape[0])
            grown_keys = np.empty((capacity // 2 + 1, n_words), dtype=np.uint64)
            for i in range(m):
                _copy(grown_keys[i], uniq[i], n_words)
            uniq = grown_keys
            tkeys, tids, shift = _table(uniq, m, capacity)
    return remap, uniq, m, tkeys, tids, shift


@njit(**PJIT)
def blur_neighbours(uniq, tkeys, tids, shift, d, bits, per_word):
    """``neighbours[j, v, 0/1]``: the vertex at ``v -/+ (1, ..., 1, -d, 1, ..., 1)`` along direction ``j``
    (``-d`` at coordinate ``j``; for ``j == d`` it falls on the implied coordinate), ``M`` where absent."""
    m, n_words = uniq.shape
    d1 = d + 1
    word, fshift, ones = key_fields(d, bits, per_word, n_words)
    out = np.empty((d1, m, 2), dtype=np.int32)
    n_blocks = (m + _BLOCK - 1) // _BLOCK
    mask = np.uint64(tids.shape[0] - 1)
    for blk in prange(n_blocks):
        key = np.empty(n_words, dtype=np.uint64)
        for v in range(blk * _BLOCK, min(m, (blk + 1) * _BLOCK)):
            if n_words == 1:  # one-word keys: the same search on scalars
                for j in range(d1):
                    step = np.uint64(d1) << fshift[j] if j < d else np.uint64(0)
                    for side in range(2):
                        k1 = uniq[v, 0] - ones[0] + step if side == 0 else uniq[v, 0] + ones[0] - step
                        e = _probe1(tkeys, tids, k1, _slot1(k1, shift), mask)[1]
                        out[j, v, side] = m if e < 0 else e
                continue
            for j in range(d1):
                for side in range(2):
                    for w in range(n_words):
                        key[w] = uniq[v, w] - ones[w] if side == 0 else uniq[v, w] + ones[w]
                    if j < d:
                        step = np.uint64(d1) << fshift[j]
                        key[word[j]] = key[word[j]] + step if side == 0 else key[word[j]] - step
                    e = tids[_lookup(tkeys, tids, key, shift)]
                    out[j, v, side] = m if e < 0 else e
    return out


@njit(**JIT)
def invert_remap(remap, m):
    """CSR of the local rows of each vertex (``indptr``, ``rows``), rows in increasing order."""
    indptr = np.zeros(m + 1, dtype=np.int64)
    for i in range(remap.shape[0]):
        indptr[remap[i] + 1] += 1
    for v in range(m):
        indptr[v + 1] += indptr[v]
    fill = indptr[:m].copy()
    rows = np.empty(remap.shape[0], dtype=np.int32)
    for i in range(remap.shape[0]):
        v = remap[i]
        rows[fill[v]] = i
        fill[v] += 1
    return indptr, rows


@njit(**PJIT)
def splat(values, pre, offsets, weights, starts, chunk, local):
    """``local[starts[c] + e] = sum over the slots q of chunk c on local vertex e: weights[q] pre[p] values[p]``
    (in parallel over chunks, in point order within one)."""
    n, n_ch = values.shape
    d1 = offsets.shape[0] // n
    for c in prange(starts.shape[0] - 1):
        base = starts[c]
        for i in range(base, starts[c + 1]):
            for k in range(n_ch):
                local[i, k] = 0.0
        for p in range(c * chunk, min(n, (c + 1) * chunk)):
            x = pre[p]
            if n_ch == 1:
                v0 = x * values[p, 0]
                for r in range(d1):
                    q = p * d1 + r
                    local[base + offsets[q], 0] += weights[q] * v0
            elif n_ch == 2:
                v0 = x * values[p, 0]
                v1 = x * values[p, 1]
                for r in range(d1):
                    q = p * d1 + r
                    i = base + offsets[q]
                    local[i, 0] += weights[q] * v0
                    local[i, 1] += weights[q] * v1
            else:
                for r in range(d1):
                    q = p * d1 + r
                    i = base + offsets[q]
                    w = weights[q] * x
                    for k in range(n_ch):
                        local[i, k] += w * values[p, k]


@njit(**PJIT)
def gather_rows(local, indptr, rows, out):
    """``out[v] = sum of the local rows of vertex v`` (in row order); row ``M`` is zeroed."""
    m = indptr.shape[0] - 1
    n_ch = local.shape[1]
    for v in prange(m):
        for k in range(n_ch):
            out[v, k] = 0.0
        for e in range(indptr[v], indptr[v + 1]):
            i = rows[e]
            for k in range(n_ch):
                out[v, k] += local[i, k]
    for k in range(n_ch):
        out[m, k] = 0.0


@njit(**PJIT)
def scatter_rows(lattice_values, remap, local):
    """``local[i] = lattice_values[remap[i]]``: every chunk's copy of the vertices it touches."""
    n_ch = local.shape[1]
    for i in prange(remap.shape[0]):
        v = remap[i]
        for k in range(n_ch):
            local[i, k] = lattice_values[v, k]


@njit(**PJIT)
def blur(buf, tmp, neighbours, transpose):
    """Every blur direction in turn (reversed for the transpose), stencil [0.5, 1, 0.5]:
    ``dst[v] = src[v] + (src[v-] + src[v+]) / 2``, ping-ponging between ``buf`` and ``tmp`` (one call, so a
    small image pays one dispatch for all ``d + 1`` passes). Returns True when the result is in ``tmp``.
    Row ``M`` of each buffer stays zero (absent neighbours)."""
    d1, m, _ = neighbours.shape
    n_ch = buf.shape[1]
    src = buf
    dst = tmp
    for jj in range(d1):
        nbrs = neighbours[d1 - 1 - jj] if transpose else neighbours[jj]
        for v in prange(m):
            a = nbrs[v, 0]
            b = nbrs[v, 1]
            for k in range(n_ch):
                dst[v, k] = src[v, k] + 0.5 * (src[a, k] + src[b, k])
        for k in range(n_ch):
            dst[m, k] = 0.0
        src, dst = dst, src
    return d1 % 2 == 1


@njit(**PJIT)
def slice_(local, offsets, weights, starts, chunk, alpha, post, out, accumulate):
    """``out[p] = alpha * post[p] * sum_r weights[p, r] * local[starts[c] + offsets[p, r]]`` (in parallel over
    chunks ``c``); ``accumulate`` adds to ``out`` instead."""
    n, n_ch = out.shape
    d1 = offsets.shape[0] // n
    zero = alpha - alpha  # accumulate in the values' dtype
    for c in prange(starts.shape[0] - 1):
        base = starts[c]
        acc = np.empty(n_ch, dtype=out.dtype)
        for p in range(c * chunk, min(n, (c + 1) * chunk)):
            s = alpha * post[p]
            if n_ch == 1:
                a0 = zero
                for r in range(d1):
                    q = p * d1 + r
                    a0 += weights[q] * local[base + offsets[q], 0]
                out[p, 0] = s * a0 + out[p, 0] if accumulate else s * a0
            elif n_ch == 2:
                a0 = zero
                a1 = zero
                for r in range(d1):
                    q = p * d1 + r
                    i = base + offsets[q]
                    a0 += weights[q] * local[i, 0]
                    a1 += weights[q] * local[i, 1]
                if accumulate:
                    out[p, 0] += s * a0
                    out[p, 1] += s * a1
                else:
                    out[p, 0] = s * a0
                    out[p, 1] = s * a1
            else:
                for k in range(n_ch):
                    acc[k] = zero
                for r in range(d1):
                    q = p * d1 + r
                    i = base + offsets[q]
                    w = weights[q]
                    for k in range(n_ch):
                        acc[k] += w * local[i, k]
                for k in range(n_ch):
                    out[p, k] = s * acc[k] + out[p, k] if accumulate else s * acc[k]


@njit(**PJIT)
def slice_grad(local, offsets, starts, chunk, other, post, scale, out):
    """The slice's derivative w.r.t. the barycentric weights, accumulated:
    ``out[p, r] += scale * post[p] * <other[p], local[starts[c] + offsets[p, r]]>`` (float64 ``out`` of shape
    ``(N, d + 1)``; in parallel over chunks ``c``, so each point's sum runs in one order whatever the threads).

    With ``local`` the blurred splat of ``x`` and ``other`` the upstream gradient, this is ``dl/dW`` through the
    slice; with ``local`` the blurred (reversed) splat of the gradient and ``other = x``, through the splat
    (docs/design/feature-gradient.md).
    """
    n, n_ch = other.shape
    d1 = offsets.shape[0] // n
    for c in prange(starts.shape[0] - 1):
        base = starts[c]
        for p in range(c * chunk, min(n, (c + 1) * chunk)):
            s = scale * post[p]
            for r in range(d1):
                i = base + offsets[p * d1 + r]
                acc = 0.0
                for k in range(n_ch):
                    acc += other[p, k] * local[i, k]
                out[p, r] += s * acc


@njit(**PJIT_EXACT)
def weights_to_features(features, scale, grad_w, out):
    """``out[p] = dl/df[p]`` (``(N, d)``) from ``grad_w[p, r] = dl/dW[p, r]`` (``(N, d + 1)``), the gradient
    w.r.t. each point's barycentric weights: the chain rule through the barycentric coordinates and the
    elevation, in the simplex :func:`build` found (recomputed here, the same arithmetic).

    The weight of remainder ``r`` is ``srt[d - r] - srt[d - r + 1]`` (``r = 0``: ``srt[d] + 1 - srt[0]``) with
    ``srt[rank_i] = (el_i - rem0_i) / (d + 1)`` (Adams et al. 2010, p. 10), so coordinate ``i`` of rank ``k``
    gets ``(g[d - k] - g[(d - k + 1) mod (d + 1)]) / (d + 1)``; the elevation ``el = E (scale * f)`` is then
    transposed: ``dl/dc_k = sum_{j <= k} dl/del_j - (k + 1) dl/del_{k + 1}``. Rounding and ranking are
    piecewise constant (zero derivative).
    """
    n, d = features.shape
    d1 = d + 1
    inv_d1 = 1.0 / d1
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        b0 = blk * _BLOCK
        nb = min(_BLOCK, n - b0)
        el = np.empty((d1, _BLOCK))
        r0 = np.empty((d1, _BLOCK))
        rank = np.empty((d1, _BLOCK))
        de = np.empty(d1)
        _simplex_block(features, scale, b0, nb, el, r0, rank)
        for t in range(nb):
            p = b0 + t
            for i in range(d1):
                a = d - np.int64(rank[i, t])
                b = a + 1 if a < d else 0
                de[i] = (grad_w[p, a] - grad_w[p, b]) * inv_d1
            run = 0.0
            for k in range(d):
                run += de[k]
                out[p, k] = scale[k] * (run - (k + 1) * de[k + 1])
