"""Numba kernels of the pydensecrf drop-in's step-wise inference (``stepInference``, ``klDivergence``).

No checking here: :mod:`crfcore.pydensecrf.densecrf` validates and allocates. The arrays in pydensecrf's layout are
``(L, N)`` (labels first); the engine's are ``(N, L)``.
"""

import math

import numpy as np
from numba import njit, prange

from .config import PJIT
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


@njit(**PJIT)
def entropy_unary(q, u):
    """``sum Q log max(Q, 1e-20) + sum U Q`` in float64 over ``(L, N)`` arrays (densecrf's ``klDivergence``
    without its pairwise part); ``U Q`` counts 0 where ``Q = 0`` (an impossible label's ``+inf`` energy)."""
    n_lab, n = q.shape
    n_blocks = (n + 4095) // 4096
    total = 0.0
    for b in prange(n_blocks):
        acc = 0.0
        for k in range(n_lab):
            for i in range(b * 4096, min(n, (b + 1) * 4096)):
                p = q[k, i]
                if p > 0:
                    acc += p * (math.log(max(p, 1e-20)) + u[k, i])
                elif p < 0:  # densecrf's expression, for a Q that is no distribution
                    acc += p * (math.log(1e-20) + u[k, i])
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
