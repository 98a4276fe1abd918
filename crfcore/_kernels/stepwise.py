"""Numba kernels of the pydensecrf drop-in's step-wise inference (``stepInference``, ``klDivergence``).

No checking here: :mod:`crfcore.pydensecrf.densecrf` validates and allocates. The arrays in pydensecrf's layout are
``(L, N)`` (labels first); the engine's are ``(N, L)``.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .config import JIT, PJIT
from .meanfield import softmax_columns

#: Points per block of :func:`step_finish` (64 as fast, 1024 1.3x slower: the blocks leave the L1 cache).
STEP_POINTS = 256


@njit(**PJIT)
def step_finish(u, msgs, mats, diagonal, q, tmp1, tmp2, tiny):
    """The rest of densecrf's ``stepInference`` once the messages are filtered, in one pass in densecrf's layout:
    ``tmp2_k = (K_k Q) M_k^T`` (term ``k``'s energy), ``tmp1 = -U - sum_k tmp2_k``, ``Q = softmax(tmp1)``.

    ``u`` ``(L, N)``: the unary energies (``+inf``: an impossible label, probability 0); ``msgs`` ``(K, N, L)``:
    the messages ``K_k Q`` in the engine's layout; ``mats`` ``(K, L, L)``: each term's ``M_k`` (Potts ``-w I``),
    applied in O(L) a point where ``diagonal[k]``. ``q``, ``tmp1``, ``tmp2`` ``(L, N)`` receive the new ``Q``, the
    energies before normalisation and the last term's energy; ``tmp1``/``tmp2`` without rows are not stored.

    Blocks of :data:`STEP_POINTS` points are turned label-major in the cache, so that the outputs are written in
    their own layout and the softmax runs over points in SIMD lanes: no transposed copy of an ``(N, L)`` array
    goes through memory (the step took 1.25-1.3x less time than with the engine's update and three transposes).
    """
    n_lab, n = u.shape
    store1 = tmp1.shape[0] > 0
    store2 = tmp2.shape[0] > 0
    for blk in prange((n + STEP_POINTS - 1) // STEP_POINTS):
        zt = np.empty((n_lab, STEP_POINTS), u.dtype)
        et = np.empty((n_lab, STEP_POINTS), u.dtype)
        r0 = blk * STEP_POINTS
        nr = min(STEP_POINTS, n - r0)
        for k in range(n_lab):
            for t in range(nr):
                zt[k, t] = -u[k, r0 + t]
        for m in range(msgs.shape[0]):
            if diagonal[m]:
                for t in range(nr):
                    for k in range(n_lab):
                        et[k, t] = mats[m, k, k] * msgs[m, r0 + t, k]
            else:
                for t in range(nr):
                    for k in range(n_lab):
                        acc = tiny - tiny  # in the values' dtype
                        for j in range(n_lab):
                            acc += mats[m, k, j] * msgs[m, r0 + t, j]
                        et[k, t] = acc
            for k in range(n_lab):
                for t in range(nr):
                    zt[k, t] -= et[k, t]
        if store2:
            for k in range(n_lab):
                for t in range(nr):
                    tmp2[k, r0 + t] = et[k, t]
        if store1:
            for k in range(n_lab):
                for t in range(nr):
                    tmp1[k, r0 + t] = zt[k, t]
        softmax_columns(zt, nr, tiny)
        for k in range(n_lab):
            for t in range(nr):
                q[k, r0 + t] = zt[k, t]


@intrinsic
def _bits32(typingctx, x):
    """The bits of a float32 as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@intrinsic
def _float32_of(typingctx, b):
    """The float32 whose bits are the low 32 bits of the integer ``b`` (Numba widens int32 arithmetic to int64)."""
    if not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if signature.args[0].bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(b), codegen


_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
#: 2 / (2i + 1): ``log m = 2 atanh(s) = s * sum_i 2 s^(2i) / (2i + 1)`` with ``s = (m - 1) / (m + 1)``, ``|s| <=
#: 0.172`` for ``m`` in [sqrt(1/2), sqrt(2)]: ten terms leave an error below 1e-16.
_ATANH = tuple(2.0 / (2 * i + 1) for i in range(10))


@njit(inline="always", **JIT)
def _log_f32(p):
    """``log(p)`` in float64 for a positive normal float32 ``p``, to a few float64 ulps, in plain arithmetic that
    vectorises (Numba's ``math.log`` calls libm one value at a time: the entropy of 512x512x21 probabilities took
    19-30 ms on 2 threads, 6 ms with this). ``p = 2^e m``: the exponent and mantissa are read from the bits through
    int32, which AVX2 converts."""
    b = _bits32(p)
    # the exponent field as a float: the bits of 2^23 with the field in the low bits, minus 2^23
    e = np.float64(_float32_of(np.int32(0x4B000000) | ((b >> np.int32(23)) & np.int32(0xFF)))
                   - np.float32(8388608.0)) - 127.0
    m = np.float64(_float32_of((b & np.int32(0x7FFFFF)) | np.int32(0x3F800000)))  # [1, 2)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    c = _ATANH
    poly = c[9]
    poly = poly * s2 + c[8]
    poly = poly * s2 + c[7]
    poly = poly * s2 + c[6]
    poly = poly * s2 + c[5]
    poly = poly * s2 + c[4]
    poly = poly * s2 + c[3]
    poly = poly * s2 + c[2]
    poly = poly * s2 + c[1]
    poly = poly * s2 + c[0]
    return e * _LN2 + s * poly


@njit(**PJIT)
def entropy_unary(q, u):
    """``sum Q log max(Q, 1e-20) + sum U Q`` in float64 over float32 ``(L, N)`` arrays (densecrf's
    ``klDivergence`` without its pairwise part); a ``Q = 0`` adds 0, also where its energy ``U`` is ``+inf`` (an
    impossible label); a negative ``Q`` (no distribution) adds as in densecrf's expression."""
    n_lab, n = q.shape
    n_blocks = (n + 4095) // 4096
    total = 0.0
    for b in prange(n_blocks):
        acc = 0.0
        for k in range(n_lab):
            for i in range(b * 4096, min(n, (b + 1) * 4096)):
                p = q[k, i]
                t = p * (_log_f32(max(p, np.float32(1e-20))) + u[k, i])
                acc += t if p != 0 else 0.0
        total += acc
    return total


@njit(**PJIT)
def dot64(a, b):
    """``sum a * b`` over two arrays of one shape, accumulated in float64."""
    x = a.reshape(-1)
    y = b.reshape(-1)
    n = x.shape[0]
    n_blocks = (n + 4095) // 4096
    total = 0.0
    for blk in prange(n_blocks):
        acc = 0.0
        for i in range(blk * 4096, min(n, (blk + 1) * 4096)):
            acc += float(x[i]) * float(y[i])
        total += acc
    return total
