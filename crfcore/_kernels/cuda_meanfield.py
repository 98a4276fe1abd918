"""CUDA kernels of the mean-field iterations and of the features: softmax, the compatibility transform, their
backward, and the reductions the gradients need (:mod:`crfcore._kernels.meanfield`'s counterparts).

One thread per pixel (a row of ``L`` labels) unless said otherwise. Sums over pixels are made in fixed blocks of
rows, block by block, never by float atomics: results are the same run to run. Exponentials are CUDA's
``math.exp`` in float64; probabilities and gradient entries below ``tiny`` are flushed to zero, as on the CPU.
No checking here: :mod:`crfcore._cuda` validates, allocates and launches.
"""

import math

from numba import cuda

#: Rows per block of the sums over pixels (``dZ^T S``, ``sum df * f``, the finiteness counts).
BLOCK_ROWS = 4096


@cuda.jit(cache=True)
def combine_softmax(u, s, b, a_s, a_b, potts, c_s, c_b, has_b, z, store_z, q, tiny):
    """``Z = U - S A_s^T - B A_b^T`` and ``Q = softmax(Z)`` (``Z`` written where ``store_z``; ``b`` left out
    unless ``has_b``); with ``potts``, ``A = c (J - I)`` in O(L). ``Z`` is computed in float64 and kept in ``q``
    between the passes."""
    n, n_lab = u.shape
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ts = 0.0
        tb = 0.0
        if potts:
            for k in range(n_lab):
                ts += s[i, k]
                if has_b:
                    tb += b[i, k]
        mx = -math.inf
        for k in range(n_lab):
            if potts:
                acc = u[i, k] - c_s * (ts - s[i, k])
                if has_b:
                    acc -= c_b * (tb - b[i, k])
            else:
                acc = u[i, k] + 0.0
                for j in range(n_lab):
                    acc -= a_s[k, j] * s[i, j] + (a_b[k, j] * b[i, j] if has_b else 0.0)
            if store_z:
                z[i, k] = acc
            q[i, k] = acc
            mx = max(mx, q[i, k])
        _softmax_tail(q, i, mx, tiny)


@cuda.jit(device=True, inline=True)
def _softmax_tail(q, i, mx, tiny):
    """Row ``i`` of ``q`` (holding ``Z``, maximum ``mx``) replaced by its softmax."""
    n_lab = q.shape[1]
    tot = 0.0
    for k in range(n_lab):
        tot += math.exp(q[i, k] - mx)
    inv = 1.0 / tot
    for k in range(n_lab):
        p = math.exp(q[i, k] - mx) * inv
        q[i, k] = p if p >= tiny else 0.0


@cuda.jit(cache=True)
def softmax(u, q, tiny):
    """``q = softmax(u)`` row by row."""
    n, n_lab = u.shape
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        mx = -math.inf
        for k in range(n_lab):
            q[i, k] = u[i, k]
            mx = max(mx, q[i, k])
        _softmax_tail(q, i, mx, tiny)


@cuda.jit(cache=True)
def add(x, out):
    """``out += x``, elementwise over ``(N, L)``."""
    n, n_lab = x.shape
    for i in range(cuda.grid(1), n * n_lab, cuda.gridsize(1)):
        r = i // n_lab
        out[r, i - r * n_lab] += x[r, i - r * n_lab]


@cuda.jit(cache=True)
def softmax_rows_bwd(q, dq, out, tiny):
    """``out[i] = q[i] * (dq[i] - <q[i], dq[i]>)``: the vector-Jacobian product of the row softmax."""
    n, n_lab = q.shape
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dot = 0.0
        for k in range(n_lab):
            dot += q[i, k] * dq[i, k]
        for k in range(n_lab):
            g = q[i, k] * (dq[i, k] - dot)
            out[i, k] = g if abs(g) >= tiny else 0.0


@cuda.jit(cache=True)
def subtract_message(src, s, a, potts, c, out):
    """``out = src - S A^T`` row by row (``out`` may be ``src``); with ``potts``, ``A = c (J - I)`` in O(L): the
    messages past the second of a CRF with more pairwise terms."""
    n, n_lab = src.shape
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        tot = 0.0
        if potts:
            for k in range(n_lab):
                tot += s[i, k]
        for k in range(n_lab):
            if potts:
                acc = src[i, k] - c * (tot - s[i, k])
            else:
                acc = src[i, k] + 0.0
                for j in range(n_lab):
                    acc -= a[k, j] * s[i, j]
            out[i, k] = acc


@cuda.jit(cache=True)
def combine_bwd(dz, a_s, a_b, potts, c_s, c_b, ds, db, du, add_du):
    """Backward of ``Z = U - S A_s^T - B A_b^T`` without its sign: ``dS = dZ A_s``, ``dB = dZ A_b`` and, with
    ``add_du``, ``du += dZ`` (the ``dZ^T S`` products are :func:`outer_blocks`'). More messages are taken two by
    two, ``du`` with the first two."""
    n, n_lab = dz.shape
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        tot = 0.0
        for k in range(n_lab):
            if add_du:
                du[i, k] += dz[i, k]
            tot += dz[i, k]
        for k in range(n_lab):
            if potts:
                ds[i, k] = c_s * (tot - dz[i, k])
                db[i, k] = c_b * (tot - dz[i, k])
            else:
                sum_s = 0.0
                sum_b = 0.0
                for j in range(n_lab):
                    sum_s += dz[i, j] * a_s[j, k]
                    sum_b += dz[i, j] * a_b[j, k]
                ds[i, k] = sum_s
                db[i, k] = sum_b


@cuda.jit(cache=True)
def outer_blocks(dz, s, b, partial):
    """``partial[blk, 0/1, k, j]``: ``sum dz[i, k] s[i, j]`` (and with ``b``) over block ``blk`` of
    :data:`BLOCK_ROWS` rows, one thread per block and label pair, rows in order (float64)."""
    n, n_lab = dz.shape
    n_blocks = partial.shape[0]
    for t in range(cuda.grid(1), n_blocks * n_lab * n_lab, cuda.gridsize(1)):
        blk = t // (n_lab * n_lab)
        kj = t - blk * n_lab * n_lab
        k = kj // n_lab
        j = kj - k * n_lab
        acc_s = 0.0
        acc_b = 0.0
        for i in range(blk * BLOCK_ROWS, min(n, (blk + 1) * BLOCK_ROWS)):
            g = dz[i, k]
            acc_s += g * s[i, j]
            acc_b += g * b[i, j]
        partial[blk, 0, k, j] = acc_s
        partial[blk, 1, k, j] = acc_b


@cuda.jit(cache=True)
def sum_blocks(partial, total):
    """``total[c, k, j] -= sum over blocks of partial[blk, c, k, j]``, blocks in order (float64): the sign of
    ``Z = U - ...``, accumulated over the iterations."""
    n_blocks, n_c, n_lab, _ = partial.shape
    for t in range(cuda.grid(1), n_c * n_lab * n_lab, cuda.gridsize(1)):
        c = t // (n_lab * n_lab)
        kj = t - c * n_lab * n_lab
        k = kj // n_lab
        j = kj - k * n_lab
        acc = 0.0
        for blk in range(n_blocks):
            acc += partial[blk, c, k, j]
        total[c, k, j] -= acc


@cuda.jit(cache=True)
def iteration_bwd(q, dq_s, dq_b, dz, tiny):
    """``dz[i] = q[i] * (g[i] - <q[i], g[i]>)`` with ``g = -(dq_s + dq_b)``: one iteration's softmax backward."""
    n, n_lab = q.shape
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dot = 0.0
        for k in range(n_lab):
            dot -= q[i, k] * (dq_s[i, k] + dq_b[i, k])
        for k in range(n_lab):
            g = q[i, k] * (-(dq_s[i, k] + dq_b[i, k]) - dot)
            dz[i, k] = g if abs(g) >= tiny else 0.0


@cuda.jit(cache=True)
def row_dots(a, b, out):
    """``out[i] += <a[i], b[i]>`` (float64 ``out``)."""
    n, n_lab = a.shape
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        acc = 0.0
        for k in range(n_lab):
            acc += a[i, k] * b[i, k]
        out[i] += acc


@cuda.jit(cache=True)
def normalisers(norm, kind, pre, post):
    """densecrf's normalisation from ``norm = K 1``: kind 0 symmetric (``pre = post = (norm + 1e-20)^-1/2``),
    1 after (``post = 1 / (norm + 1e-20)``), 2 before (``pre``, the same), 3 none; the others are ones."""
    for i in range(cuda.grid(1), norm.shape[0], cuda.gridsize(1)):
        x = norm[i, 0]
        one = x - x + 1
        if kind == 0:
            pre[i] = one / math.sqrt(x + 1e-20)
            post[i] = pre[i]
        elif kind == 1:
            pre[i] = one
            post[i] = one / (x + 1e-20)
        elif kind == 2:
            pre[i] = one / (x + 1e-20)
            post[i] = one
        else:
            pre[i] = one
            post[i] = one


@cuda.jit(cache=True)
def norm_grad(pre, post, dot_pre, dot_post, kind, out):
    """``dl/dD`` per pixel (``D = K 1``) from ``sum_t <Q, dQ>`` / ``sum_t <dS, S>``, in ``out``'s dtype
    (:meth:`crfcore._engine.kernel.FeatureGrad.result`)."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        if kind == 0:
            x = float(pre[i])
            out[i, 0] = 0.5 * x * x * (dot_pre[i] + dot_post[i])
        elif kind == 1:
            out[i, 0] = float(post[i]) * dot_post[i]
        elif kind == 2:
            out[i, 0] = float(pre[i]) * dot_pre[i]
        else:
            out[i, 0] = 0.0


@cuda.jit(cache=True)
def features(image, shape, widths, theta_beta, with_image, out):
    """Kernel features of each pixel: positions divided by ``widths`` (last spatial axis first, as
    :func:`crfcore.features.positions`), then, ``with_image``, ``image / theta_beta`` (float64 divisions: the
    CPU's features to the bit)."""
    n = out.shape[0]
    for p in range(cuda.grid(1), n, cuda.gridsize(1)):
        n_dims = shape.shape[0]
        rem = p
        for axis in range(n_dims - 1, -1, -1):
            size = shape[axis]
            c = rem % size
            rem = rem // size
            out[p, n_dims - 1 - axis] = float(c) / widths[axis]
        if with_image:
            for c in range(image.shape[1]):
                out[p, n_dims + c] = float(image[p, c]) / theta_beta[c]


@cuda.jit(cache=True)
def column_range(x, lo, hi, bad):
    """Per block of :data:`BLOCK_ROWS` rows and column: minimum, maximum and the count of non-finite values."""
    n, d = x.shape
    n_blocks = lo.shape[0]
    for t in range(cuda.grid(1), n_blocks * d, cuda.gridsize(1)):
        blk = t // d
        k = t - blk * d
        mn = math.inf
        mx = -math.inf
        count = 0
        for i in range(blk * BLOCK_ROWS, min(n, (blk + 1) * BLOCK_ROWS)):
            v = float(x[i, k])
            if math.isfinite(v):
                mn = min(mn, v)
                mx = max(mx, v)
            else:
                count += 1
        lo[blk, k] = mn
        hi[blk, k] = mx
        bad[blk, k] = count


@cuda.jit(cache=True)
def column_dots(a, b, col0, partial):
    """``partial[blk, k] = sum a[i, k] * b[i, col0 + k]`` over block ``blk`` of :data:`BLOCK_ROWS` rows (float64):
    ``sum df * f`` per feature column, for the widths' gradient."""
    n, d = a.shape
    n_blocks = partial.shape[0]
    for t in range(cuda.grid(1), n_blocks * d, cuda.gridsize(1)):
        blk = t // d
        k = t - blk * d
        acc = 0.0
        for i in range(blk * BLOCK_ROWS, min(n, (blk + 1) * BLOCK_ROWS)):
            acc += a[i, k] * b[i, col0 + k]
        partial[blk, k] = acc


@cuda.jit(cache=True)
def image_grad(df, col0, theta_beta, out):
    """``out[i, c] += df[i, col0 + c] / theta_beta[c]``: the guidance image's gradient from its features'."""
    n, n_ch = out.shape
    for t in range(cuda.grid(1), n * n_ch, cuda.gridsize(1)):
        i = t // n_ch
        c = t - i * n_ch
        out[i, c] += df[i, col0 + c] / theta_beta[c]


@cuda.jit(cache=True)
def widen(src, dst):
    """``dst[i] = src[i]`` into float64 (1-D): float32 features on the device made the lattice's float64."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[i] = float(src[i])


@cuda.jit(cache=True)
def copy_bytes(src, dst):
    """``dst[i] = src[i]`` (uint8 views: a device copy of any array)."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit(cache=True)
def fill(out, value):
    """``out[:] = value`` (1-D): zeros and tables filled on the device, not copied from the host."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = value
