"""The permutohedral lattice and mean field in TensorFlow ops only (no ``numpy_function``, no custom op).

The same function as crfcore's Numba core (Adams et al. 2010; Krähenbühl's densecrf conventions), written with
ops that SavedModel, TensorFlow Lite and GPUs handle, and shaped for TensorFlow Lite's speed: the embedding as
elementwise float arithmetic on ``(N,)`` rows (:func:`embed`); the points that share a simplex found by a hash
table of segment ops and only the distinct simplices' vertex keys packed into int64 (:func:`_simplices`) and
numbered by ``tf.unique`` (for TensorFlow Lite by a hash table of segment ops, :func:`_number`); a hash table of
segment ops for the blur's neighbours (:func:`blur_neighbours`); ``unsorted_segment_sum`` for the splat (in
TensorFlow, not Lite, a weighted ``tf.math.bincount``: :func:`_bincount_sum`), gathers for the blur, and a slice
that gathers whole rows of the simplex table; both kernels splatted into one vertex table
(:class:`TfKernelPair`), the spatial lattice built once as constants where its size and width are fixed
(:func:`spatial_lattice`), and one filtered channel per step for two labels. Gradients come from TensorFlow's
autodiff. ``tf.unique`` has a data-dependent output size: XLA (``jit_compile=True``) compiles it but pads its outputs,
which would corrupt the lattice, so building one under XLA raises ``NotImplementedError``.
"""

from functools import partial

import numpy as np

try:
    import tensorflow as tf
except ImportError as exc:  # the framework is an extra: say which
    raise ImportError(f"{__name__} needs TensorFlow: pip install 'crfcore[tf]' ({exc})") from exc


def _in_xla():
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # private module moved: cannot tell
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def check_not_xla():
    """Raise where XLA is compiling: it accepts ``tf.unique`` but pads its outputs, and the lattice comes out
    wrong (seen with TensorFlow 2.21 on CPU) - an error is better than a silently wrong segmentation."""
    if _in_xla():
        raise NotImplementedError(
            "the CRF's TensorFlow lattice cannot run under XLA (tf.function(jit_compile=True)): XLA pads the "
            "data-dependent output of tf.unique and the lattice would be wrong. Compile the rest of the model with "
            "XLA and leave the CRF layer out, or call it without jit_compile."
        )


def _step(x, dtype):
    """``1.0`` where ``x > 0``, else ``0.0``, in float arithmetic only (TensorFlow Lite's XNNPACK runs it; a
    comparison and a select would not be): exact for ``x == 0`` and ``|x| >= 1e-30`` (float32) or ``1e-300``
    (float64)."""
    big = 1e300 if dtype == tf.float64 else 1e30
    return tf.math.ceil(tf.clip_by_value(x * tf.constant(big, dtype), 0.0, 1.0))


def sorting_network(n):
    """Batcher's odd-even merge sort for ``n`` inputs: comparators ``(i, j)``, ``i < j``, in order (12 for 6)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _sorted(rows):
    """Same-shape rows sorted elementwise, ascending: a :func:`sorting_network` of minima and maxima (XNNPACK
    ops; exact)."""
    rows = list(rows)
    for i, j in sorting_network(len(rows)):
        rows[i], rows[j] = tf.minimum(rows[i], rows[j]), tf.maximum(rows[i], rows[j])
    return rows


def embed(features, embed_dtype=tf.float64, row_scales=None):
    """Each point's barycentric ``weights`` (d + 1, N) float32 and its simplex: vertex 0's packed int64 key
    ``key0`` (N,) and the ``climbers``, d rows (N,) of coordinate indices (float) in the order in which the
    vertices leave vertex 0 (:func:`vertex_keys` makes the vertices' keys), with the radix ``powers`` (d,) of the
    packing (which leaves room for the blur neighbours).

    The arithmetic of the Numba kernel, written for TensorFlow Lite: elementwise arithmetic on ``(N,)`` rows with
    scalar constants (what XNNPACK runs fast; sorts, gathers and scatters it does not), one row per coordinate or
    vertex. The rounding to the remainder-0 point is a :func:`_step` of the two distances; a coordinate's rank
    counts the coordinates whose residual is larger, or equal with a smaller index (the kernel's tie rule), one
    comparison per pair; the residuals in rank order (for the weights) and the coordinates in rank order (the
    climbers) come from sorting networks of minima and maxima (:func:`_sorted`), exact; vertex 0's coordinates are
    small integers, exact in float, packed into an int64 key by Horner's rule. ``features``: ``(N, d)`` or d rows
    ``(N,)``; ``row_scales``: d multipliers of the coordinates (numbers or scalar tensors), folded into the
    embedding's own scale, so that each coordinate is multiplied once (TensorFlow's graph optimiser and TensorFlow
    Lite's converter fold a chain of constant multiplications, each its own way, and a point on a simplex
    boundary would then land in another simplex).
    """
    d = len(features) if isinstance(features, (list, tuple)) else int(features.shape[-1])
    d1 = d + 1
    fdt = embed_dtype
    # the coordinates as rows: TensorFlow Lite slices a column of (N, d) 20x slower than it transposes
    f = [tf.cast(r, fdt) for r in features] if isinstance(features, (list, tuple)) else tf.unstack(
        tf.transpose(tf.cast(features, fdt)), num=d, axis=0)
    scale = np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
    sm = None
    elevated = [None] * d1
    if row_scales is None:
        mult = [tf.constant(c, fdt) for c in scale]
    else:  # numbers multiplied here as a tensor would be in the graph: in embed_dtype, rounded alike
        num = np.float64 if fdt == tf.float64 else np.float32
        mult = [tf.constant(num(c) * num(r)) if isinstance(r, (int, float, np.floating)) else tf.cast(r, fdt) * num(c)
                for c, r in zip(scale, row_scales)]
    for j in range(d, 0, -1):
        cf = f[j - 1] * mult[j - 1]
        elevated[j] = -tf.constant(float(j), fdt) * cf if sm is None else sm - tf.constant(float(j), fdt) * cf
        sm = cf if sm is None else sm + cf
    elevated[0] = sm
    inv_d1 = tf.constant(1.0 / d1, fdt)
    rem0 = []
    for e in elevated:  # the nearer of the multiples of d + 1 around e; the lower one when halfway
        down = tf.math.floor(e * inv_d1) * d1
        up = tf.math.ceil(e * inv_d1) * d1
        rem0.append(down + (up - down) * _step((e - down) - (up - e), fdt))
    total = tf.round(tf.add_n(rem0) * inv_d1)  # (N,)
    di = [e - r for e, r in zip(elevated, rem0)]
    # rank of i: #{j: di_j > di_i} + #{j < i: di_j == di_i}; ahead[a][b] (a < b): 1 where b ranks before a
    ahead = {(a, b): tf.cast(di[b] > di[a], fdt) for a in range(d1) for b in range(a + 1, d1)}
    rank = []
    for i in range(d1):
        terms = [total + float(i)] + [ahead[i, j] for j in range(i + 1, d1)]
        before = [ahead[j, i] for j in range(i)]
        rank.append(tf.add_n(terms) if not before else tf.add_n(terms) - tf.add_n(before))
    # wrapped around: the final rank is taken modulo d + 1 (ranks are integers: clip gives the indicator)
    for i in range(d1):
        wrap = tf.clip_by_value(-rank[i], 0.0, 1.0) - tf.clip_by_value(rank[i] - d, 0.0, 1.0)
        rem0[i] = rem0[i] + d1 * wrap
        rank[i] = rank[i] + d1 * wrap
    res = [(e - r) * inv_d1 for e, r in zip(elevated, rem0)]
    # residuals in rank order: the residuals fall as the rank rises, so srt[k] (that of rank k) is the k-th largest
    srt = _sorted(res)[::-1]
    w = [(srt[d] + 1.0) - srt[0]] + [srt[d - k] - srt[d - k + 1] for k in range(1, d1)]
    weights = tf.cast(tf.stack(w, axis=0), tf.float32)
    # keys: vertex k is rem0 + k on every coordinate, -d1 more on the coordinates ranked above d - k
    lo = tf.reduce_min(tf.stack(rem0[:d])) - 2 * d1
    radix = tf.reduce_max(tf.stack(rem0[:d])) - lo + 2 * d1 + 1
    radix64 = tf.cast(radix, tf.int64)
    powers = [tf.ones([], tf.int64)]
    for _ in range(d - 1):
        powers.append(powers[-1] * radix64)
    # vertex 0's key by Horner's rule (exact small integers in float)
    key0 = None
    for i in range(d - 1, -1, -1):
        digit = tf.cast(rem0[i] - lo, tf.int64)
        key0 = digit if key0 is None else key0 * radix64 + digit
    # vertex k's coordinates gain -d1 on the coordinate of rank d + 1 - k, and on those of vertex k - 1: the
    # coordinates in rank order, from rank * (d + 1) + index sorted (distinct small integers, exact in float)
    by_rank = _sorted([r * float(d1) + float(i) for i, r in enumerate(rank)])
    climbers = [by_rank[d1 - k] - float((d1 - k) * d1) for k in range(1, d1)]
    return weights, key0, climbers, tf.stack(powers)


def vertex_keys(key0, climbers, powers):
    """The packed keys ``(d + 1, S)`` of the simplices named by :func:`embed`'s ``key0`` and ``climbers`` (one
    simplex per column; any subset of the points): vertex k is vertex 0 + k (1, ..., 1) - (d + 1) (the unit
    vectors of climbers 1, ..., k), each climber's power fetched by its index."""
    d1 = len(climbers) + 1
    step = tf.reduce_sum(powers)
    table = tf.concat([powers, tf.zeros([1], tf.int64)], 0)  # coordinate d: no power
    keys, top = [key0], None
    for k in range(1, d1):
        power = tf.gather(table, tf.cast(climbers[k - 1], tf.int32))
        top = power if top is None else top + power
        keys.append(key0 + (k * step - d1 * top))
    return tf.stack(keys, axis=0)


def _lookup(uniq, queries, lite=True):
    """For each of ``queries`` (Q,) int64, its index in the distinct keys ``uniq`` (M,), ``M`` where absent.

    A hash table from segment ops (``tf.unique`` in TensorFlow Lite is an ordered map: slow): the keys go to
    slots ``key mod P`` with ``P ~ 8 M``; a query whose slot holds one key, or whose slot's largest-index key is
    its own, is settled by comparing keys; the few left (slots holding several keys) are numbered by ``tf.unique``
    over those slots' keys and queries. Exact whatever the collisions; they only cost time. Not ``lite``
    (TensorFlow's kernels, not TensorFlow Lite's): the slots' counts by ``tf.math.bincount``, 2x faster there.
    """
    m = tf.shape(uniq)[0]
    p = tf.cast(8 * m + 7, tf.int64)
    slot_k = tf.cast(tf.math.floormod(uniq, p), tf.int32)
    slot_q = tf.cast(tf.math.floormod(queries, p), tf.int32)
    n_slots = tf.cast(p, tf.int32)
    ids = tf.range(m)
    count = tf.math.unsorted_segment_sum(tf.ones_like(ids), slot_k, n_slots) if lite else \
        tf.math.bincount(slot_k, minlength=n_slots, maxlength=n_slots)
    owner = tf.math.unsorted_segment_max(ids, slot_k, n_slots)  # empty slots: the smallest int32
    c = tf.gather(count, slot_q)
    o = tf.clip_by_value(tf.gather(owner, slot_q), 0, m - 1)
    hit = tf.logical_and(c > 0, tf.equal(tf.gather(uniq, o), queries))
    found = tf.where(hit, o, m)
    # the rest: queries whose slot holds several keys, none of them found yet
    open_q = tf.reshape(tf.where(tf.logical_and(c > 1, tf.logical_not(hit))), [-1])
    crowded = tf.reshape(tf.where(tf.gather(count, slot_k) > 1), [-1])
    n_crowded = tf.shape(crowded)[0]
    _, idx = tf.unique(tf.concat([tf.gather(uniq, crowded), tf.gather(queries, open_q)], 0), out_idx=tf.int32)
    idx = tf.slice(idx, [n_crowded], [-1])  # < n_crowded: the crowded key of that number
    late = tf.where(idx < n_crowded, tf.gather(tf.concat([tf.cast(crowded, tf.int32), [m]], 0),
                                               tf.minimum(idx, n_crowded)), m)
    return tf.tensor_scatter_nd_update(found, tf.reshape(open_q, [-1, 1]), late)


def _number(keys):
    """``tf.unique(keys)`` for (Q,) int64 keys, in another order: the distinct keys ``(M,)`` and each key's index.

    A hash table from segment ops (TensorFlow Lite's ``UNIQUE`` is an ordered map, ~40 ns a key): the keys go to
    slots ``key mod P`` with ``P ~ Q``; a slot's owner is the last key sent there, and every key equal to its
    slot's owner is numbered by the owner (the owners in order of position). Keys that differ from their slot's
    owner (slots shared by several distinct keys; never a key split between the two ways, since equal keys share
    the owner) go to ``tf.unique`` and are numbered after them. Exact whatever the collisions; they only cost time.
    """
    q = tf.shape(keys)[0]
    ids = tf.range(q)
    n_slots = q + 7
    slot = tf.cast(tf.math.floormod(keys, tf.cast(n_slots, tf.int64)), tf.int32)
    owner = tf.gather(tf.math.unsorted_segment_max(ids, slot, n_slots), slot)
    hit = tf.equal(tf.gather(keys, owner), keys)
    is_owner = tf.equal(owner, ids)
    rank = tf.math.cumsum(tf.cast(is_owner, tf.int32)) - 1
    n_owners = tf.reduce_sum(tf.cast(is_owner, tf.int32))
    missed = tf.reshape(tf.where(tf.logical_not(hit)), [-1])
    rest, rest_idx = tf.unique(tf.gather(keys, missed), out_idx=tf.int32)
    idx = tf.tensor_scatter_nd_update(tf.gather(rank, owner), tf.reshape(missed, [-1, 1]), rest_idx + n_owners)
    return tf.concat([tf.gather(keys, tf.reshape(tf.where(is_owner), [-1])), rest], 0), idx


SIMPLEX_SLOTS = 4  # slots per point of the simplices' hash table: a quarter full at most, few collisions


def _simplices(key0, climbers, powers, number):
    """The lattice's distinct vertex keys ``(M,)``, its simplices' vertex numbers ``(S, d + 1)`` and each point's
    simplex ``(N,)``, from :func:`embed`'s outputs, the vertices numbered by ``number`` (``tf.unique`` or
    :func:`_number`).

    Neighbouring points share simplices (S is about N / 2 on a photo), so only the simplices' vertex keys are made
    and numbered, not every point's ``d + 1``, and a slice gathers whole rows of the simplex table. A simplex is
    named by ``key0`` and its climbers' code and found with a hash table of segment ops (slot owners, as in
    :func:`_number`); a point whose slot's owner names another simplex keeps a simplex row of its own, so that a
    collision only repeats a row (its vertices are numbered exactly all the same). Above ``d = 9``, where the
    hash's ``slot * (d + 1)^d`` could overflow int64, every point has its own row.
    """
    d = len(climbers)
    d1 = d + 1
    n = tf.shape(key0)[0]
    ids = tf.range(n)
    if d1 ** d <= 2 ** 30:
        code = tf.cast(tf.add_n([c * float(d1 ** k) for k, c in enumerate(climbers)]), tf.int64) \
            if d1 ** d <= 2 ** 24 else tf.add_n([tf.cast(c, tf.int64) * d1 ** k for k, c in enumerate(climbers)])
        n_slots = SIMPLEX_SLOTS * n + 7
        p = tf.cast(n_slots, tf.int64)
        slot = tf.cast(tf.math.floormod(tf.math.floormod(key0, p) * (d1 ** d) + code, p), tf.int32)
        owner = tf.gather(tf.math.unsorted_segment_max(ids, slot, n_slots), slot)
        same = tf.logical_and(tf.equal(tf.gather(key0, owner), key0), tf.equal(tf.gather(code, owner), code))
        rep = tf.where(same, owner, ids)
        is_rep = tf.equal(rep, ids)
        simplex = tf.gather(tf.math.cumsum(tf.cast(is_rep, tf.int32)) - 1, rep)
        first = tf.cast(tf.reshape(tf.where(is_rep), [-1]), tf.int32)
        key0, climbers = tf.gather(key0, first), [tf.gather(c, first) for c in climbers]
    else:
        simplex = ids
    uniq, idx = number(tf.reshape(vertex_keys(key0, climbers, powers), [-1]))
    return uniq, tf.transpose(tf.reshape(idx, [d1, -1])), simplex


def blur_neighbours(uniq, powers, lite=True):
    """``(d + 1, 2, M + 1)``: the vertex at ``v -/+ (1, ..., 1, -d, 1, ..., 1)`` along each direction (all ``+-1``
    for the last), ``M`` where absent; column ``M`` (the zero row's) reads ``M``.

    Only the ``+`` neighbours are looked up (:func:`_lookup`); the ``-`` table is their inverse (``u = v + e``
    exactly when ``v = u - e``), written with one scatter. Half the lookups of searching both directions. The
    zero row's column comes from a probe key beyond the largest, whose neighbours are all absent (no
    concatenation per table: TensorFlow Lite is slow at those). Not ``lite``, the lookups' counts and the scatter
    are ``tf.math.bincount`` (not a TensorFlow Lite built-in; 5x faster than TensorFlow's scatter).
    """
    d = int(powers.shape[0])
    d1 = d + 1
    m = tf.shape(uniq)[0]
    dirs = np.ones((d1, d), dtype=np.int64)
    for j in range(d):
        dirs[j, j] = -d
    deltas = tf.reduce_sum(tf.constant(dirs) * powers[None, :], -1)  # (d1,)
    # |delta| < (d + 1) sum(powers): the probe's neighbours are beyond every key
    probe = tf.concat([uniq, [tf.reduce_max(uniq) + 2 * d1 * tf.reduce_sum(powers)]], 0)  # (M + 1,)
    plus = tf.reshape(_lookup(uniq, tf.reshape(tf.reshape(probe, [1, -1]) + tf.reshape(deltas, [-1, 1]), [-1]), lite),
                      [d1, m + 1])
    found = plus < m
    # minus[j, plus[j, v]] = v: one scatter into (d1, M + 1) slots; absent entries add 0 to slot M (the zero row's)
    slots = tf.reshape(plus + tf.reshape(tf.range(d1) * (m + 1), [-1, 1]), [-1])
    marks = tf.reshape(tf.where(found, tf.reshape(tf.range(m + 1) + 1, [1, -1]), 0), [-1])
    n = d1 * (m + 1)
    minus = tf.scatter_nd(tf.reshape(slots, [-1, 1]), marks, [n]) if lite else \
        tf.math.bincount(slots, weights=marks, minlength=n, maxlength=n)
    minus = tf.reshape(minus, [d1, m + 1]) - 1
    minus = tf.where(minus >= 0, minus, m)
    return tf.stack([minus, plus], axis=1)


def _bincount_sum(values, ids, n):
    """``unsorted_segment_sum(values, ids, n)`` for ``values`` ``(Q,)`` or ``(Q, C)`` as a weighted
    ``tf.math.bincount``: on TensorFlow's CPU kernels 2x faster (it has no gradient: the gathering one is given
    here). Not a TensorFlow Lite built-in."""
    @tf.custom_gradient
    def total(v):
        def grad(g):
            return tf.gather(g, ids)

        if v.shape.rank == 1:
            return tf.math.bincount(ids, weights=v, minlength=n, maxlength=n), grad
        c = tf.shape(v)[1]
        rows = tf.math.bincount(tf.tile(ids[None], [c, 1]), weights=tf.transpose(v), minlength=n, maxlength=n,
                                axis=-1)  # (C, n)
        return tf.transpose(rows), grad

    return total(values)


def _splat(contrib, offsets, m, segment_sum=tf.math.unsorted_segment_sum):
    """Sum ``contrib (D, N, C)`` into the lattice's rows ``(M + 1, C)`` (row ``M`` stays zero) by ``offsets (D, N)``."""
    return segment_sum(tf.reshape(contrib, [-1, tf.shape(contrib)[2]]), tf.reshape(offsets, [-1]), m + 1)


def _blur(lat, tables):
    """One ``[1/2, 1, 1/2]`` pass per ``(minus, plus)`` pair of neighbour rows ``(M + 1,)``, in order; absent
    neighbours read row ``M``."""
    for minus, plus in tables:
        lat = lat + 0.5 * (tf.gather(lat, minus) + tf.gather(lat, plus))
    return lat


def _slice_rows(lat, simplices, simplex, weights):
    """``(N,)``: each point's weighted sum of its simplex's vertices in the 1-D ``lat``, with ``weights (N, d1)``;
    the vertices' values gathered per simplex ``(S, d1)``, then whole rows per point (``simplex (N,)``): fewer and
    wider gathers than one per point and vertex."""
    return tf.reduce_sum(tf.gather(tf.gather(lat, simplices), simplex) * weights, 1)


def _slice(lat, offsets, weights):
    """``sum_k weights[k] * lat[offsets[k]]``, ``(N, C)``: the ``D`` terms are leading slices added one by one
    (TensorFlow Lite sums over a middle axis several times slower)."""
    return tf.add_n(tf.unstack(tf.expand_dims(weights, -1) * tf.gather(lat, offsets), axis=0))


class TfLattice:
    """A lattice built from ``(N, d)`` features (or d rows ``(N,)``) with TensorFlow ops; ``apply`` filters
    ``(N, C)`` float32.

    The embedding (elevation, rounding, rank, barycentric weights) runs in ``embed_dtype``: float64 (default)
    like the Numba core, so both make the same choice for points that lie exactly on a simplex boundary (pixel
    grids do) and build the same lattice; float32 for TensorFlow Lite, whose built-in ops have no float64
    arithmetic (it then differs from the core where a tie rounds the other way). Filtering runs in float32.
    A point's ``d + 1`` vertices (``offsets``) and weights are stored vertex-major, ``(d + 1, N)``, for the splat;
    the one-channel slices go through ``simplices`` ``(S, d + 1)`` (each distinct simplex's vertices) and
    ``simplex`` ``(N,)`` (each point's row) with point-major weights (:meth:`slice_rows`).
    """

    def __init__(self, features, embed_dtype=tf.float64, row_scales=None):
        check_not_xla()
        d = len(features) if isinstance(features, (list, tuple)) else int(features.shape[-1])
        self.dim = d
        weights, key0, climbers, powers = embed(features, embed_dtype, row_scales)
        # the float32 embedding is TensorFlow Lite's, whose UNIQUE is slow (TensorFlow's is a fast hash map) and
        # which has no BINCOUNT (TensorFlow's splats faster with it)
        lite = embed_dtype == tf.float32
        number = _number if lite else partial(tf.unique, out_idx=tf.int32)
        self.segment_sum = tf.math.unsorted_segment_sum if lite else _bincount_sum
        uniq, self.simplices, self.simplex = _simplices(key0, climbers, powers, number)
        self.m = tf.shape(uniq)[0]
        self.neighbours = blur_neighbours(uniq, powers, lite)  # (d1, 2, M + 1)
        self.offsets = tf.transpose(tf.gather(self.simplices, self.simplex))  # (d1, N)
        self.weights = weights  # (d1, N)
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self._norm = None
        self._normalised = {}
        self._neighbour_rows = None

    def norm(self):
        """``K 1`` (N,), the normalisations' denominator; computed once (eagerly too, where the lattice is)."""
        if self._norm is None:
            self._norm = self.alpha * self._filter1(self.weights, tf.transpose(self.weights))
        return self._norm

    def normalised(self, normalization):
        """``(splat_w, slice_w)`` of the kernel with densecrf's ``normalization``: the splat weights ``(d1, N)``
        with its ``pre`` factor, the slice weights with its ``post`` factor and ``alpha``. Computed once per
        normalisation (eagerly too, where the lattice is)."""
        if normalization not in self._normalised:
            norm = self.norm()
            p = q = None
            if normalization == "symmetric":
                p = q = tf.math.rsqrt(norm + 1e-20)
            elif normalization == "after":
                q = 1.0 / (norm + 1e-20)
            elif normalization == "before":
                p = 1.0 / (norm + 1e-20)
            splat_w = self.weights if p is None else self.weights * p
            slice_w = self.alpha * (self.weights if q is None else self.weights * q)
            self._normalised[normalization] = (splat_w, slice_w)
        return self._normalised[normalization]

    def slice_rows(self, normalization):
        """The slice weights of :meth:`normalised` point-major, ``(N, d1)``, for :func:`_slice_rows`."""
        key = ("rows", normalization)
        if key not in self._normalised:
            self._normalised[key] = (tf.transpose(self.normalised(normalization)[1]),)
        return self._normalised[key][0]

    def normalised_ones(self, normalization):
        """The normalised kernel applied to ones, ``(N,)``: 1 for ``"after"``, ``K 1`` without normalisation,
        filtered once for the others."""
        key = ("ones", normalization)
        if key not in self._normalised and normalization == "after":  # K 1 / K 1
            self._normalised[key] = (tf.ones_like(self.norm()),)
        elif key not in self._normalised and normalization not in ("symmetric", "before"):  # no normalisation
            self._normalised[key] = (self.norm(),)
        if key not in self._normalised:
            self._normalised[key] = (self._filter1(self.normalised(normalization)[0], self.slice_rows(normalization)),)
        return self._normalised[key][0]

    def as_constants(self):
        """This eagerly built lattice with its arrays (and those computed so far) as constants of the graph
        being traced, not as captured eager tensors."""
        def const(t):
            return tf.constant(t.numpy())

        out = object.__new__(TfLattice)
        out.__dict__.update(self.__dict__)
        for name in ("m", "neighbours", "offsets", "weights", "simplices", "simplex"):
            setattr(out, name, const(getattr(self, name)))
        out._norm = None if self._norm is None else const(self._norm)
        out._neighbour_rows = None
        out._normalised = {k: tuple(const(t) for t in v) for k, v in self._normalised.items()}
        return out

    def tables(self, order):
        """The blur's ``(minus, plus)`` neighbour rows ``(M + 1,)`` along the directions in ``order``; absent
        neighbours and the zero row ``M`` read row ``M``. Rows come from ``tf.unstack`` (TensorFlow Lite's
        strided slice of one row is ~20x slower)."""
        if self._neighbour_rows is None:
            self._neighbour_rows = [tf.unstack(t, num=self.dim + 1) for t in tf.unstack(self.neighbours, num=2, axis=1)]
        return [(self._neighbour_rows[0][j], self._neighbour_rows[1][j]) for j in order]

    def _filter1(self, splat_w, slice_rows):
        """Ones filtered with the given splat weights ``(d1, N)`` and slice weights ``(N, d1)``, ``(N,)``: a pass on
        one channel in 1-D (TensorFlow Lite's segment sum, broadcasts and gathers on ``(., 1)`` rows are slower)."""
        lat = self.segment_sum(tf.reshape(splat_w, [-1]), tf.reshape(self.offsets, [-1]), self.m + 1)
        return _slice_rows(_blur(lat, self._own_tables()), self.simplices, self.simplex, slice_rows)

    def _own_tables(self, transpose=False):
        """The blur's tables of this lattice alone, with the zero row ``M`` reading itself."""
        return self.tables(range(self.dim, -1, -1) if transpose else range(self.dim + 1))

    def apply(self, values, transpose=False):
        """``K @ values`` (or ``K^T @ values``): splat, blur along each direction, slice. ``values``: (N, C)."""
        contrib = tf.expand_dims(self.weights, -1) * tf.expand_dims(values, 0)
        lat = _blur(_splat(contrib, self.offsets, self.m, self.segment_sum), self._own_tables(transpose))
        return self.alpha * _slice(lat, self.offsets, self.weights)


class TfKernelPair:
    """The spatial and the bilateral kernel, normalised, splatted together: both vertex sets in one table, so
    that a mean-field step is one splat; the table is then split, and each lattice blurred along its own
    directions and sliced.

    ``apply(vs, vb)`` returns ``K_s vs + K_b vb`` for ``(N, C)`` values, each kernel with densecrf's
    ``normalization`` (its ``pre`` factor folded into the splat weights, its ``post`` factor and the blur's
    ``alpha`` into the slice weights), which is what the iterations need: ``K_s (q A_s) + K_b (q A_b)``;
    ``ones`` is ``(K_s 1, K_b 1)``, normalised.
    """

    def __init__(self, spatial, bilateral, normalization):
        lats = [spatial, bilateral]
        # rows: the spatial lattice's and its zero row, then the bilateral's and its zero row
        self.sizes = [lats[0].m + 1, lats[1].m + 1]
        self.m = lats[0].m + lats[1].m + 1
        self.offsets = tf.concat([lats[0].offsets, lats[1].offsets + self.sizes[0]], 0)  # (D, N)
        splat_w, slice_w = zip(*(lat.normalised(normalization) for lat in lats))
        self.splat_w = list(splat_w)
        self.splat_all = tf.concat(splat_w, 0)
        self.slice_w = list(slice_w)
        self.slice_rows = [lat.slice_rows(normalization) for lat in lats]
        self._lattices, self._normalization = lats, normalization
        self.segment_sum = bilateral.segment_sum

    @property
    def ones(self):
        """``(K_s 1, K_b 1)``, normalised (computed on first use)."""
        return tuple(lat.normalised_ones(self._normalization) for lat in self._lattices)

    def _blurred(self, lat):
        """The joint table ``(M + 1, ...)`` split per lattice and each blurred along its own directions (the
        spatial lattice has fewer: no pass over rows that would not change)."""
        return [_blur(t, one._own_tables()) for t, one in zip(tf.split(lat, self.sizes), self._lattices)]

    def sums(self, x):
        """``(K_s x, K_b x)`` for one channel ``x (N,)``: one splat (1-D: TensorFlow Lite's segment sum over
        ``(Q, 1)`` rows is ~25 % slower), a blur and a slice per kernel, through its simplices."""
        lat = self.segment_sum(tf.reshape(self.splat_all * tf.reshape(x, [1, -1]), [-1]),
                               tf.reshape(self.offsets, [-1]), self.m + 1)
        return tuple(_slice_rows(t, one.simplices, one.simplex, rows)
                     for t, one, rows in zip(self._blurred(lat), self._lattices, self.slice_rows))

    def apply(self, vs, vb):
        contrib = tf.concat([tf.expand_dims(w, -1) * tf.expand_dims(v, 0) for w, v in zip(self.splat_w, (vs, vb))], 0)
        lat = _splat(contrib, self.offsets, self.m, self.segment_sum)
        return tf.add_n([_slice(t, one.offsets, w)
                         for t, one, w in zip(self._blurred(lat), self._lattices, self.slice_w)])


def _position_rows(h, w, dtype):
    """Pixel positions x and y, like densecrf, as two rows ``(H W,)``."""
    ys, xs = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
    return [tf.cast(tf.reshape(t, [-1]), dtype) for t in (xs, ys)]


def spatial_lattice(h, w, theta_gamma, normalization, embed_dtype=tf.float64):
    """The spatial kernel's lattice of an ``h x w`` image, shared by every image of that size.

    Where ``h``, ``w`` and ``theta_gamma`` are plain numbers (a fixed width and a fixed image size, as in an
    exported model), it is built once, eagerly, and enters the graph as constants: neither a SavedModel nor a
    TensorFlow Lite model rebuilds it for every image (the TFLite converter folds it by itself from a Keras model,
    not from a concrete function). Otherwise (a trained width, a dynamic size) it is built in the graph, once per
    batch.
    """
    known = all(isinstance(x, (int, np.integer)) for x in (h, w)) and not tf.is_tensor(theta_gamma)
    if known:  # (a tensor, even an eager one, may be a trained width that a tape watches)
        with tf.init_scope():
            lattice = _lattice(_position_rows(h, w, embed_dtype), [theta_gamma] * 2, embed_dtype)
            lattice.normalised_ones(normalization)
        return lattice.as_constants()
    return _lattice(_position_rows(h, w, embed_dtype), [theta_gamma] * 2, embed_dtype)


def _lattice(rows, widths, dtype):
    """:class:`TfLattice` of feature ``rows`` over their ``widths`` (numbers or scalar tensors): in float64 divided
    here, as the core divides; in float32 (TensorFlow Lite's embedding) the reciprocals go to :func:`embed`, which
    folds them into its own scale (a division by a constant is a multiplication by its reciprocal in TensorFlow
    Lite, and a chain of constant multiplications is folded by TensorFlow's graph optimiser: either would round
    differently from TensorFlow run eagerly)."""
    if dtype == tf.float64:
        return TfLattice([r / tf.cast(w, dtype) for r, w in zip(rows, widths)], dtype)
    # numbers: the reciprocal in float32, as TensorFlow computes a tensor's (a fixed and a trained width of the
    # same value make the same lattice)
    return TfLattice(rows, dtype, [np.float32(1.0) / np.float32(w) if isinstance(w, (int, float, np.floating)) else
                                   tf.math.reciprocal(tf.cast(w, dtype)) for w in widths])


def _bilateral_features(image, theta_alpha, theta_beta, dtype=tf.float64):
    """The bilateral kernel's feature rows of one ``(H, W, C)`` image and their widths, for :func:`_lattice`:
    ``2 + C`` rows ``(H W,)``, positions (theta_alpha) and colours (theta_beta)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    n_ch = image.shape[-1]  # static: the lattice's dimension
    if n_ch is None:
        raise ValueError("the CRF's TensorFlow lattice needs the image's number of channels to be known")
    # rows, not (N, d) columns: TensorFlow Lite slices a column 20x slower than it transposes
    colour = tf.unstack(tf.transpose(tf.reshape(tf.cast(image, dtype), [h * w, n_ch])), num=n_ch, axis=0)
    return _position_rows(h, w, dtype) + colour, [theta_alpha] * 2 + [theta_beta] * n_ch


def meanfield_one(logits, image, spatial, ws, wb, mu, *, n_iter, theta_alpha, theta_beta, normalization,
                  embed_dtype=tf.float64):
    """Refined logits ``Z_T`` of one image: ``logits (H, W, L)``, ``image (H, W, C)``, its size's
    :func:`spatial_lattice`, matrices ``(L, L)``."""
    shape = tf.shape(logits)
    n_lab = logits.shape[-1]
    u = tf.reshape(tf.cast(logits, tf.float32), [-1, n_lab])
    bilateral = _lattice(*_bilateral_features(image, theta_alpha, theta_beta, embed_dtype), embed_dtype)
    kernels = TfKernelPair(spatial, bilateral, normalization)
    a_s = tf.transpose(tf.matmul(mu, ws))  # Z = U - S (mu W_s)^T - B (mu W_b)^T = U - S (Q A_s) - B (Q A_b)
    a_b = tf.transpose(tf.matmul(mu, wb))
    if n_lab == 2:
        return tf.reshape(_binary_iterations(u, kernels, a_s, a_b, n_iter), shape)
    z = u
    for _ in range(n_iter):
        q = tf.nn.softmax(z, axis=-1)
        z = u - kernels.apply(tf.matmul(q, a_s), tf.matmul(q, a_b))
    return tf.reshape(z, shape)


def _binary_iterations(u, kernels, a_s, a_b, n_iter):
    """The iterations for two labels, filtering one channel instead of two: with ``q = (q0, 1 - q0)``,
    ``K (q A) = K 1 (x) A[1] + K q0 (x) (A[0] - A[1])``; ``K 1`` is filtered once, and until the last step only
    ``z0 - z1`` is kept (``q0 = sigmoid(z0 - z1)``)."""
    ks1, kb1 = kernels.ones
    # per label, as (N,) rows times scalars (TensorFlow Lite broadcasts (N, 1) x (1, 2) slowly, and slices a
    # column of (N, 2) 10x slower than it transposes)
    u = tf.unstack(tf.transpose(u), num=2, axis=0)
    base = [u[c] - ks1 * a_s[1, c] - kb1 * a_b[1, c] for c in range(2)]
    da_s, da_b = a_s[0] - a_s[1], a_b[0] - a_b[1]  # (2,)
    base_delta = base[0] - base[1]
    delta = u[0] - u[1]
    for _ in range(n_iter - 1):
        ks, kb = kernels.sums(tf.sigmoid(delta))
        delta = base_delta - (ks * (da_s[0] - da_s[1]) + kb * (da_b[0] - da_b[1]))
    out_s, out_b = kernels.sums(tf.sigmoid(delta))
    return tf.transpose(tf.stack([base[c] - out_s * da_s[c] - out_b * da_b[c] for c in range(2)], axis=0))


def meanfield(logits, image, ws, wb, mu, *, n_iter, theta_alpha, theta_beta, theta_gamma, normalization,
              embed_dtype=tf.float64):
    """Refined logits of a batch ``(B, H, W, L)`` with ``image (B, H, W, C)``: each image its own bilateral
    lattice, one spatial lattice for all."""
    logits = tf.cast(logits, tf.float32)
    if n_iter == 0:
        return logits
    image = tf.cast(image, tf.float32)
    h, w = logits.shape[1], logits.shape[2]
    if h is None or w is None:
        h, w = tf.shape(logits)[1], tf.shape(logits)[2]
    spatial = spatial_lattice(h, w, theta_gamma, normalization, embed_dtype)
    kw = dict(n_iter=n_iter, theta_alpha=theta_alpha, theta_beta=theta_beta, normalization=normalization,
              embed_dtype=embed_dtype)
    if logits.shape[0] is not None:  # static batch: unrolled (what TFLite converts best)
        # unstacked, not indexed: TensorFlow Lite's strided slice of one image is ~20x slower
        return tf.stack([meanfield_one(lg, im, spatial, ws, wb, mu, **kw)
                         for lg, im in zip(tf.unstack(logits), tf.unstack(image))])
    return tf.map_fn(lambda x: meanfield_one(x[0], x[1], spatial, ws, wb, mu, **kw), (logits, image),
                     fn_output_signature=tf.TensorSpec(logits.shape[1:], tf.float32))


def lattice_filter(features, values, transpose=False):
    """Convenience: build a :class:`TfLattice` and filter ``values`` once (tests and comparisons)."""
    return TfLattice(tf.convert_to_tensor(features, tf.float64)).apply(tf.convert_to_tensor(values, tf.float32),
                                                                        transpose=transpose)


__all__ = ["TfLattice", "TfKernelPair", "spatial_lattice", "meanfield", "meanfield_one", "lattice_filter"]
