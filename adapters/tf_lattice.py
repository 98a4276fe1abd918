"""The permutohedral lattice and mean field in TensorFlow ops only (no ``numpy_function``, no custom op).

The same function as crfcore's Numba core (Adams et al. 2010; Krähenbühl's densecrf conventions), written with
ops that SavedModel, TensorFlow Lite and GPUs handle: column sums for the elevation, ``top_k`` for the simplex
rank, gathers in rank order for the barycentric weights, keys packed into int64, ``tf.unique`` for the vertex
dedup *and* for the blur-neighbour lookup (unique over ``[vertices, shifted vertices]`` numbers existing vertices
first), ``unsorted_segment_sum`` for the splat, gathers for blur and slice. Gradients come from TensorFlow's
autodiff. ``tf.unique`` has a data-dependent output size: XLA (``jit_compile=True``) compiles it but pads its outputs,
which would corrupt the lattice, so building one under XLA raises ``NotImplementedError``.
"""

import numpy as np
import tensorflow as tf


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


def embed(features, embed_dtype=tf.float64):
    """Each point's barycentric ``weights`` (N, d + 1) float32 and the packed int64 keys (N, d + 1) of its simplex's
    vertices, with the radix ``powers`` (d,) of the packing (which leaves room for the blur neighbours).

    The arithmetic of the Numba kernel, in ops that stay on ``(N, d + 1)`` arrays (TensorFlow Lite runs them
    without broadcasting to ``(N, d + 1, d + 1)``): one ``top_k`` sorts each point's residuals (its order breaks
    ties by index, the rank's rule), a scatter inverts that order, and the barycentric weights and the vertices'
    keys come from gathers in rank order and a cumulative sum of the packing's powers.
    """
    d = int(features.shape[-1])
    d1 = d + 1
    fdt = embed_dtype
    f = tf.cast(features, fdt)
    scale = np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
    sm = tf.zeros_like(f[:, 0])
    cols = [None] * d1
    for j in range(d, 0, -1):
        cf = f[:, j - 1] * tf.constant(scale[j - 1], fdt)
        cols[j] = sm - tf.constant(float(j), fdt) * cf
        sm = sm + cf
    cols[0] = sm
    elevated = tf.stack(cols, axis=1)  # (N, d1)
    inv_d1 = tf.constant(1.0 / d1, fdt)
    v = elevated * inv_d1
    up = tf.math.ceil(v) * d1
    down = tf.math.floor(v) * d1
    rem0 = tf.where(up - elevated < elevated - down, up, down)
    total = tf.cast(tf.round(tf.reduce_sum(rem0, -1) / d1), tf.int32)
    di = elevated - rem0
    # rank: the position in the residuals sorted in decreasing order, ties by index (top_k's order)
    n = tf.shape(f)[0]
    rowoff = tf.range(n)[:, None] * d1  # flat index of each row's first coordinate
    order = tf.math.top_k(di, k=d1, sorted=True).indices  # (N, d1) the coordinate at each position
    positions = tf.tile(tf.range(d1)[None, :], [n, 1])
    rank = tf.reshape(tf.scatter_nd(tf.reshape(order + rowoff, [-1, 1]), tf.reshape(positions, [-1]), [n * d1]),
                      [n, d1]) + total[:, None]
    neg, over = rank < 0, rank > d  # wrapped around (the final rank is taken modulo d + 1 below)
    rem0 = tf.where(neg, rem0 + d1, tf.where(over, rem0 - d1, rem0))
    # the coordinate of each final rank k: position (k - total) mod (d + 1) of the sorted order
    inv = tf.gather(tf.reshape(order, [-1]), tf.math.floormod(positions - total[:, None], d1) + rowoff)
    srt = tf.gather(tf.reshape((elevated - rem0) * inv_d1, [-1]), inv + rowoff)  # residuals by rank
    rev = tf.reverse(srt, [1])  # rev[:, k] = srt[:, d - k]
    w0 = (rev[:, :1] + 1.0) - srt[:, :1]
    weights = tf.cast(tf.concat([w0, rev[:, 1:] - rev[:, :-1]], axis=1), tf.float32)
    # keys: vertex r is rem0 + r on every coordinate, -d1 more on the coordinates ranked above d - r
    r0 = tf.cast(tf.round(rem0[:, :d]), tf.int32)
    lo = tf.reduce_min(r0) - 2 * d1
    radix = tf.cast(tf.reduce_max(r0) - lo + 2 * d1 + 1, tf.int64)
    powers = [tf.ones([], tf.int64)]
    for _ in range(d - 1):
        powers.append(powers[-1] * radix)
    powers = tf.stack(powers)
    base = tf.reduce_sum(tf.cast(r0 - lo, tf.int64) * powers, -1)  # (N,)
    p_by_rank = tf.gather(tf.concat([powers, tf.zeros([1], tf.int64)], 0), inv)  # (N, d1), 0 for coordinate d
    # vertex r subtracts d1 * (sum of the powers of the r highest ranks)
    top = tf.cumsum(tf.reverse(p_by_rank, [1]), axis=1, exclusive=True)  # (N, d1): r highest ranks' powers
    r = tf.range(d1, dtype=tf.int64)[None, :]
    packed = base[:, None] + r * tf.reduce_sum(powers) - d1 * top
    return weights, packed, powers


def blur_neighbours(uniq, powers):
    """``(d + 1, 2, M)``: the vertex at ``v -/+ (1, ..., 1, -d, 1, ..., 1)`` along each direction (all ``+-1`` for
    the last), ``M`` where absent, found by numbering ``[vertices, shifted vertices]`` (existing vertices first)."""
    d = int(powers.shape[0])
    d1 = d + 1
    m = tf.shape(uniq)[0]
    dirs = np.ones((d1, d), dtype=np.int64)
    for j in range(d):
        dirs[j, j] = -d
    deltas = tf.reduce_sum(tf.constant(dirs) * powers[None, :], -1)  # (d1,)
    shifted = tf.reshape(uniq[None, None, :] + tf.constant([[-1], [1]], tf.int64)[None] * deltas[:, None, None],
                         [-1])
    _, lookup = tf.unique(tf.concat([uniq, shifted], 0), out_idx=tf.int32)
    found = lookup[m:]
    found = tf.where(found < m, found, m)  # absent: the all-zero row M
    return tf.reshape(found, [d1, 2, -1])


class TfLattice:
    """A lattice built from ``(N, d)`` features with TensorFlow ops; ``apply`` filters ``(N, C)`` float32.

    The embedding (elevation, rounding, rank, barycentric weights) runs in ``embed_dtype``: float64 (default)
    like the Numba core, so both make the same choice for points that lie exactly on a simplex boundary (pixel
    grids do) and build the same lattice; float32 for TensorFlow Lite, whose built-in ops have no float64
    arithmetic (it then differs from the core where a tie rounds the other way). Filtering runs in float32.
    """

    def __init__(self, features, embed_dtype=tf.float64):
        check_not_xla()
        d = int(features.shape[-1])
        self.dim = d
        weights, packed, powers = embed(features, embed_dtype)
        uniq, offsets = tf.unique(tf.reshape(packed, [-1]), out_idx=tf.int32)
        m = tf.shape(uniq)[0]
        self.neighbours = blur_neighbours(uniq, powers)  # (d1, 2, M)
        self.m = m
        self.offsets = tf.reshape(offsets, [-1, d + 1])  # (N, d1)
        self.weights = weights
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.pad = tf.fill([1], m)

    def apply(self, values, transpose=False):
        """``K @ values`` (or ``K^T @ values``): splat, blur along each direction, slice. ``values``: (N, C)."""
        d1 = self.dim + 1
        n_ch = tf.shape(values)[1]
        contrib = self.weights[:, :, None] * values[:, None, :]  # (N, d1, C)
        lat = tf.math.unsorted_segment_sum(tf.reshape(contrib, [-1, n_ch]), tf.reshape(self.offsets, [-1]),
                                           self.m + 1)
        order = range(self.dim, -1, -1) if transpose else range(d1)
        for j in order:
            minus = tf.concat([self.neighbours[j, 0], self.pad], 0)
            plus = tf.concat([self.neighbours[j, 1], self.pad], 0)
            lat = lat + 0.5 * (tf.gather(lat, minus) + tf.gather(lat, plus))
        out = tf.reduce_sum(self.weights[:, :, None] * tf.gather(lat, self.offsets), axis=1)
        return self.alpha * out


class TfKernel:
    """A lattice with densecrf's normalisation (see :class:`crfcore.inference.Kernel`)."""

    def __init__(self, features, normalization, embed_dtype=tf.float64):
        self.lattice = TfLattice(features, embed_dtype)
        n = tf.shape(features)[0]
        norm = self.lattice.apply(tf.ones([n, 1], tf.float32))[:, 0]
        self.pre = self.post = None
        if normalization == "symmetric":
            self.pre = self.post = tf.math.rsqrt(norm + 1e-20)[:, None]
        elif normalization == "after":
            self.post = (1.0 / (norm + 1e-20))[:, None]
        elif normalization == "before":
            self.pre = (1.0 / (norm + 1e-20))[:, None]

    def apply(self, x):
        if self.pre is not None:
            x = x * self.pre
        x = self.lattice.apply(x)
        return x * self.post if self.post is not None else x


def _features(image, theta_alpha, theta_beta, theta_gamma, dtype=tf.float64):
    """Spatial and bilateral features of one ``(H, W, C)`` image, positions as (x, y) like densecrf."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ys, xs = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
    pos = tf.cast(tf.stack([tf.reshape(xs, [-1]), tf.reshape(ys, [-1])], 1), dtype)
    colour = tf.reshape(tf.cast(image, dtype), [h * w, -1])
    ta, tb, tg = (tf.cast(t, dtype) for t in (theta_alpha, theta_beta, theta_gamma))  # floats or tensors
    return pos / tg, tf.concat([pos / ta, colour / tb], 1)


def meanfield_one(logits, image, ws, wb, mu, *, n_iter, theta_alpha, theta_beta, theta_gamma, normalization,
                  embed_dtype=tf.float64):
    """Refined logits ``Z_T`` of one image: ``logits (H, W, L)``, ``image (H, W, C)``, matrices ``(L, L)``."""
    shape = tf.shape(logits)
    n_lab = logits.shape[-1]
    u = tf.reshape(tf.cast(logits, tf.float32), [-1, n_lab])
    if n_iter == 0:
        return logits
    fs, fb = _features(image, theta_alpha, theta_beta, theta_gamma, embed_dtype)
    ks, kb = TfKernel(fs, normalization, embed_dtype), TfKernel(fb, normalization, embed_dtype)
    a_s = tf.transpose(tf.matmul(mu, ws))  # Z = U - S (mu W_s)^T - B (mu W_b)^T
    a_b = tf.transpose(tf.matmul(mu, wb))
    z = u
    for _ in range(n_iter):
        q = tf.nn.softmax(z, axis=-1)
        z = u - tf.matmul(ks.apply(q), a_s) - tf.matmul(kb.apply(q), a_b)
    return tf.reshape(z, shape)


def meanfield(logits, image, ws, wb, mu, *, n_iter, theta_alpha, theta_beta, theta_gamma, normalization,
              embed_dtype=tf.float64):
    """Refined logits of a batch ``(B, H, W, L)`` with ``image (B, H, W, C)``: each image its own lattice."""
    kw = dict(n_iter=n_iter, theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma,
              normalization=normalization, embed_dtype=embed_dtype)
    logits = tf.cast(logits, tf.float32)
    image = tf.cast(image, tf.float32)
    if logits.shape[0] is not None:  # static batch: unrolled (what TFLite converts best)
        return tf.stack([meanfield_one(logits[i], image[i], ws, wb, mu, **kw) for i in range(logits.shape[0])])
    return tf.map_fn(lambda x: meanfield_one(x[0], x[1], ws, wb, mu, **kw), (logits, image),
                     fn_output_signature=tf.TensorSpec(logits.shape[1:], tf.float32))


def lattice_filter(features, values, transpose=False):
    """Convenience: build a :class:`TfLattice` and filter ``values`` once (tests and comparisons)."""
    return TfLattice(tf.convert_to_tensor(features, tf.float64)).apply(tf.convert_to_tensor(values, tf.float32),
                                                                        transpose=transpose)


__all__ = ["TfLattice", "TfKernel", "meanfield", "meanfield_one", "lattice_filter"]
