"""Numba kernels of the mean-field iterations: row-wise softmax and its backward.

No checking here: :mod:`crfcore.inference` validates and allocates.

``tiny``: probabilities and gradient entries below it (the smallest normal float) are set to zero. Saturated
softmaxes (logit gaps beyond ~87 in float32) produce subnormal floats, which CPUs process up to a hundred times
slower; TensorFlow flushes subnormals to zero for the same reason.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .config import JIT, PJIT


@intrinsic
def _pow2(typingctx, k):
    """``2^k`` for a float ``k`` holding an integer whose power is a normal number of its type, built from the
    exponent bits. The conversion goes through int32 (``cvttps2dq`` / ``cvttpd2dq``), which vectorises on AVX2;
    a conversion to int64 does not (it needs AVX-512) and kept the whole softmax loop scalar."""
    if not isinstance(k, types.Float):
        return None
    sig = k(k)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        n = builder.fptosi(args[0], i32)
        if signature.return_type == types.float32:
            bits = builder.shl(builder.add(n, ir.Constant(i32, 127)), ir.Constant(i32, 23))
            return builder.bitcast(bits, ir.FloatType())
        i64 = ir.IntType(64)
        bits = builder.shl(builder.add(builder.sext(n, i64), ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.bitcast(bits, ir.DoubleType())

    return sig, codegen


_LOG2E = 1.4426950408889634
# ln 2 split in two (Cody & Waite) so that k ln 2 is subtracted without rounding error for |k| <= 1022
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_TAYLOR = tuple(1.0 / math.factorial(i) for i in range(13))
#: Below this exp(x) is under float64's smallest normal number: the softmax flushes it to zero anyway.
_EXP_MIN = -708.0
# float32: ln 2 split so that k * _LN2_HI32 is exact (9 significant bits times |k| <= 126), a degree-7 Taylor
# polynomial (relative error below 6e-9 on |r| <= ln(2)/2, under float32's rounding), and the bound below which
# exp(x) is under float32's smallest normal number
_LOG2E32 = np.float32(_LOG2E)
_LN2_HI32 = np.float32(0.693359375)
_LN2_LO32 = np.float32(math.log(2.0) - 0.693359375)
_TAYLOR32 = tuple(np.float32(c) for c in _TAYLOR[:8])
_EXP_MIN32 = np.float32(-87.3)


def _exp_nonpos(x):
    """``exp(x)`` for ``x <= 0`` in ``x``'s float type (compiled through its overload)."""
    raise NotImplementedError("compiled only: see _exp_nonpos_impl")


@njit(inline="always", **JIT)
def _exp_nonpos64(x):
    """``exp(x)`` for float64 ``x <= 0``, to a few float64 ulps, in plain arithmetic that vectorises.

    Numba's ``np.exp`` calls libm one value at a time (no SVML here), which made the softmax of 21 labels
    cost more than the two filterings. ``exp(x) = 2^k exp(r)`` with ``k = round(x / ln 2)``, ``|r| <= ln(2)/2``
    and a degree-12 Taylor polynomial (error below 2e-16); ``2^k`` is built from its exponent bits.
    Returns 0 below :data:`_EXP_MIN`.
    """
    xc = max(x, _EXP_MIN)
    k = np.floor(xc * _LOG2E + 0.5)
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    c = _TAYLOR
    p = c[12]
    p = p * r + c[11]
    p = p * r + c[10]
    p = p * r + c[9]
    p = p * r + c[8]
    p = p * r + c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + 1.0
    p = p * r + 1.0
    e = p * _pow2(k)
    return e if x >= _EXP_MIN else 0.0


@njit(inline="always", **JIT)
def _exp_nonpos32(x):
    """:func:`_exp_nonpos64` in float32 arithmetic throughout (twice the SIMD lanes, a shorter polynomial):
    float32 logits make float32 probabilities, and a float64 softmax of them cost a quarter of a 21-label
    iteration. Relative error about one float32 ulp; 0 below :data:`_EXP_MIN32`."""
    xc = max(x, _EXP_MIN32)
    k = np.floor(xc * _LOG2E32 + np.float32(0.5))
    r = (xc - k * _LN2_HI32) - k * _LN2_LO32
    c = _TAYLOR32
    p = c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + c[1]
    p = p * r + c[0]
    e = p * _pow2(k)
    return e if x >= _EXP_MIN32 else e - e


@overload(_exp_nonpos, inline="always")
def _exp_nonpos_impl(x):
    if x == types.float32:
        return lambda x: _exp_nonpos32(x)
    return lambda x: _exp_nonpos64(x)


#: Points per block of the softmax: the block is transposed so that its loops run over rows (SIMD lanes).
SOFTMAX_ROWS = 64


@njit(**JIT)
def _softmax_block(zt, r0, nr, out, tiny):
    """Rows ``r0 .. r0 + nr - 1`` of ``out`` ``(N, L)``: the softmax (:func:`softmax_columns`) of the block's
    logits, already copied label-major into the scratch ``zt`` (L, SOFTMAX_ROWS) of ``out``'s dtype."""
    softmax_columns(zt, nr, tiny)
    for t in range(nr):
        for k in range(zt.shape[0]):
            out[r0 + t, k] = zt[k, t]


@njit(**JIT)
def softmax_columns(zt, nr, tiny):
    """The numerically stable softmax ``exp(z - max z) / sum exp(z - max z)`` of the first ``nr`` columns of the
    label-major block ``zt`` (L, SOFTMAX_ROWS), in place.

    Label-major, every loop runs over the block's points in SIMD lanes (a row of 21 labels does not fill vector
    registers). Exponentials below the smallest normal number are 0, so nothing subnormal is computed (each
    subnormal costs a microcode assist); probabilities below ``tiny`` become 0.
    """
    n_lab = zt.shape[0]
    zero = tiny - tiny  # in the scratch's dtype: a float literal would make the loops float64
    mx = np.empty(nr, zt.dtype)
    tot = np.zeros(nr, zt.dtype)
    for t in range(nr):
        mx[t] = zt[0, t]
    for k in range(1, n_lab):
        for t in range(nr):
            mx[t] = max(mx[t], zt[k, t])
    for k in range(n_lab):
        for t in range(nr):
            e = _exp_nonpos(zt[k, t] - mx[t])
            zt[k, t] = e
            tot[t] += e
    for t in range(nr):
        tot[t] = 1.0 / tot[t]
    for k in range(n_lab):
        for t in range(nr):
            p = zt[k, t] * tot[t]
            zt[k, t] = p if p >= tiny else zero


@njit(**PJIT)
def softmax_rows_bwd(q, dq, out, tiny):
    """Vector-Jacobian product of the row softmax: ``out[i] = q[i] * (dq[i] - <q[i], dq[i]>)``."""
    n, n_lab = q.shape
    for i in prange(n):
        dot = 0.0
        for k in range(n_lab):
            dot += q[i, k] * dq[i, k]
        for k in range(n_lab):
            g = q[i, k] * (dq[i, k] - dot)
            out[i, k] = g if abs(g) >= tiny else 0.0



@njit(inline="always", **JIT)
def _softmax_pair(z0, z1, q, i, tiny):
    """:func:`_softmax_block` for two labels, on scalars (one exp), without branches (the loop vectorises):
    ``e = exp(-|z1 - z0|)`` weighs the smaller logit, ``1 / (1 + e)`` is the larger one's probability."""
    zero = tiny - tiny  # in the values' dtype (see _softmax_block)
    one = tiny / tiny
    e = _exp_nonpos(-abs(z1 - z0))
    inv = one / (e + one)
    small = e * inv
    small = small if small >= tiny else zero
    inv = inv if inv >= tiny else zero
    first = z1 > z0
    q[i, 0] = small if first else inv
    q[i, 1] = inv if first else small


@njit(**PJIT)
def combine_softmax_pair(u, s, b, a_s, a_b, potts, c_s, c_b, z, q, tiny):
    """:func:`combine_softmax` for two labels (binary segmentation): scalar code, since loops over a run-time label
    count cost more than the work. A kernel of its own: a call compiles only the path it takes."""
    n = u.shape[0]
    store_z = z.shape[0] > 0
    has_b = b.shape[0] > 0
    for i in prange(n):
        s0, s1 = s[i, 0], s[i, 1]
        b0, b1 = (b[i, 0], b[i, 1]) if has_b else (s0 - s0, s0 - s0)
        if potts:
            z0 = u[i, 0] - c_s * s1 - c_b * b1
            z1 = u[i, 1] - c_s * s0 - c_b * b0
        else:
            z0 = u[i, 0] - (a_s[0, 0] * s0 + a_b[0, 0] * b0) - (a_s[0, 1] * s1 + a_b[0, 1] * b1)
            z1 = u[i, 1] - (a_s[1, 0] * s0 + a_b[1, 0] * b0) - (a_s[1, 1] * s1 + a_b[1, 1] * b1)
        if store_z:
            z[i, 0] = z0
            z[i, 1] = z1
        _softmax_pair(z0, z1, q, i, tiny)


@njit(**PJIT)
def combine_softmax(u, s, b, a_s, a_b, potts, c_s, c_b, z, q, tiny):
    """Compatibility transform and softmax, fused: ``Z = U - S A_s^T - B A_b^T``, ``Q = softmax(Z)``.

    With ``potts`` the matrices are ``c_s (J - I)`` and ``c_b (J - I)`` and cost O(L) per pixel (two labels:
    :func:`combine_softmax_pair`). An array with no rows stands for an absent one: ``Z`` is stored only where ``z``
    has rows (probabilities do not need it), and a ``b`` without rows drops its term (both kernels' messages
    already added in ``s``).
    """
    n, n_lab = u.shape
    store_z = z.shape[0] > 0
    has_b = b.shape[0] > 0
    for blk in prange((n + SOFTMAX_ROWS - 1) // SOFTMAX_ROWS):
        zt = np.empty((n_lab, SOFTMAX_ROWS), u.dtype)  # the values' dtype: float32 logits get a float32 softmax
        r0 = blk * SOFTMAX_ROWS
        nr = min(SOFTMAX_ROWS, n - r0)
        for t in range(nr):
            i = r0 + t
            if potts:
                ts = c_s - c_s  # in the values' dtype
                for k in range(n_lab):
                    ts += s[i, k]
                for k in range(n_lab):
                    zt[k, t] = u[i, k] - c_s * (ts - s[i, k])
                if has_b:
                    tb = c_b - c_b
                    for k in range(n_lab):
                        tb += b[i, k]
                    for k in range(n_lab):
                        zt[k, t] -= c_b * (tb - b[i, k])
            else:
                for k in range(n_lab):
                    acc = u[i, k]
                    for j in range(n_lab):
                        acc -= a_s[k, j] * s[i, j] + (a_b[k, j] * b[i, j] if has_b else 0.0)
                    zt[k, t] = acc
            if store_z:
                for k in range(n_lab):
                    z[i, k] = zt[k, t]
        _softmax_block(zt, r0, nr, q, tiny)


#: Rows per block of the backward's ``dZ^T S`` products (partial sums per block, summed in block order).
BWD_ROWS = 4096


@njit(**PJIT)
def combine_bwd(dz, s, b, a_s, a_b, potts, c_s, c_b, ds, db, du, partial):
    """Backward of ``Z = U - S A_s^T - B A_b^T`` (without its sign), fused in one pass over ``dZ``.

    ``dS = dZ A_s``, ``dB = dZ A_b``, ``du += dZ``, and ``partial[blk] = (dZ^T S, dZ^T B)`` over block ``blk`` of
    :data:`BWD_ROWS` rows, accumulated in the values' dtype as BLAS would (the caller sums the blocks in
    float64, in block order: the same result whatever the thread count). In parallel over blocks; with
    ``potts`` the matrices are ``c (J - I)``.
    """
    n, n_lab = dz.shape
    for blk in prange((n + BWD_ROWS - 1) // BWD_ROWS):
        acc_s = np.zeros((n_lab, n_lab), dtype=dz.dtype)
        acc_b = np.zeros((n_lab, n_lab), dtype=dz.dtype)
        for i in range(blk * BWD_ROWS, min(n, (blk + 1) * BWD_ROWS)):
            for k in range(n_lab):
                g = dz[i, k]
                du[i, k] += g
                for j in range(n_lab):
                    acc_s[k, j] += g * s[i, j]
                    acc_b[k, j] += g * b[i, j]
            if potts:
                tot = dz[i, 0] - dz[i, 0]
                for k in range(n_lab):
                    tot += dz[i, k]
                for k in range(n_lab):
                    ds[i, k] = c_s * (tot - dz[i, k])
                    db[i, k] = c_b * (tot - dz[i, k])
            else:
                for k in range(n_lab):
                    sum_s = dz[i, 0] - dz[i, 0]
                    sum_b = sum_s
                    for j in range(n_lab):
                        sum_s += dz[i, j] * a_s[j, k]
                        sum_b += dz[i, j] * a_b[j, k]
                    ds[i, k] = sum_s
                    db[i, k] = sum_b
        for k in range(n_lab):
            for j in range(n_lab):
                partial[blk, 0, k, j] = acc_s[k, j]
                partial[blk, 1, k, j] = acc_b[k, j]


@njit(**PJIT)
def iteration_bwd(q, dq_s, dq_b, dz, tiny):
    """Backward of one iteration's softmax given both kernels' transposed outputs: ``dZ = softmax'(Q)^T g``
    with ``g = -(dq_s + dq_b)`` (the sign of ``Z = U - ...``), i.e. ``dz[i] = q[i] * (g[i] - <q[i], g[i]>)``."""
    n, n_lab = q.shape
    for i in prange(n):
        dot = q[i, 0] - q[i, 0]
        for k in range(n_lab):
            dot -= q[i, k] * (dq_s[i, k] + dq_b[i, k])
        for k in range(n_lab):
            g = q[i, k] * (-(dq_s[i, k] + dq_b[i, k]) - dot)
            dz[i, k] = g if abs(g) >= tiny else 0.0


@njit(**PJIT)
def row_dots(a, b, out):
    """``out[i] += <a[i], b[i]>`` (accumulated in float64, ``out`` float64)."""
    n, n_lab = a.shape
    for i in prange(n):
        acc = 0.0
        for k in range(n_lab):
            acc += a[i, k] * b[i, k]
        out[i] += acc


@njit(**PJIT)
def subtract_message(src, s, a, potts, c, out):
    """``out = src - S A^T`` row by row (``out`` may be ``src``); with ``potts``, ``A = c (J - I)`` in O(L)."""
    n, n_lab = src.shape
    for i in prange(n):
        if potts:
            tot = s[i, 0] - s[i, 0]
            for k in range(n_lab):
                tot += s[i, k]
            for k in range(n_lab):
                out[i, k] = src[i, k] - c * (tot - s[i, k])
        else:
            for k in range(n_lab):
                acc = src[i, k]
                for j in range(n_lab):
                    acc -= a[k, j] * s[i, j]
                out[i, k] = acc


@njit(**PJIT)
def message_bwd(dz, s, a, potts, c, ds, partial):
    """The backward of one more message in ``Z = U - ... - S A^T`` (without its sign): ``dS = dZ A`` and
    ``partial[blk, 0] = dZ^T S`` over block ``blk`` of :data:`BWD_ROWS` rows (see :func:`combine_bwd`)."""
    n, n_lab = dz.shape
    for blk in prange((n + BWD_ROWS - 1) // BWD_ROWS):
        acc = np.zeros((n_lab, n_lab), dtype=dz.dtype)
        for i in range(blk * BWD_ROWS, min(n, (blk + 1) * BWD_ROWS)):
            for k in range(n_lab):
                g = dz[i, k]
                for j in range(n_lab):
                    acc[k, j] += g * s[i, j]
            if potts:
                tot = dz[i, 0] - dz[i, 0]
                for k in range(n_lab):
                    tot += dz[i, k]
                for k in range(n_lab):
                    ds[i, k] = c * (tot - dz[i, k])
            else:
                for k in range(n_lab):
                    total = dz[i, 0] - dz[i, 0]
                    for j in range(n_lab):
                        total += dz[i, j] * a[j, k]
                    ds[i, k] = total
        for k in range(n_lab):
            for j in range(n_lab):
                partial[blk, 0, k, j] = acc[k, j]


@njit(**PJIT)
def transpose_scaled(src, scale, out):
    """``out = scale * src.T`` in 64 x 64 blocks, in parallel over all blocks (an ``(L, N)`` array with small
    ``L`` has a single row of blocks): a strided NumPy copy of such an array misses the cache on every element."""
    rows, cols = src.shape
    col_blocks = (cols + 63) // 64
    for b in prange(((rows + 63) // 64) * col_blocks):
        r0 = (b // col_blocks) * 64
        c0 = (b % col_blocks) * 64
        r1 = min(rows, r0 + 64)
        c1 = min(cols, c0 + 64)
        if r1 - r0 >= c1 - c0:
            for c in range(c0, c1):
                for r in range(r0, r1):
                    out[c, r] = scale * src[r, c]
        else:  # a short, wide block ((L, N) with few labels): the inner loop along the rows read (1.6x faster)
            for r in range(r0, r1):
                for c in range(c0, c1):
                    out[c, r] = scale * src[r, c]
