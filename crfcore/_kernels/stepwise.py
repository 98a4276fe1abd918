"""Numba kernels of the pydensecrf drop-in's step-wise inference (``stepInference``, ``klDivergence``).

No checking here: :mod:`crfcore.pydensecrf.densecrf` validates and allocates. The arrays in pydensecrf's layout are
``(L, N)`` (labels first); the engine's are ``(N, L)``.
"""

import math

from numba import njit, prange

from .config import PJIT

#: Rows and columns of a transposed block (as :func:`crfcore._kernels.meanfield.transpose_scaled`).
_BLOCK = 64


@njit(**PJIT)
def transpose_shifted(src, shift, out):
    """``out[l, i] = src[i, l] + shift[i]``: an ``(N, L)`` array to ``(L, N)`` with a per-point shift (densecrf's
    energies from the engine's, which differ by a per-point constant for Potts terms), in parallel blocks."""
    rows, cols = src.shape
    col_blocks = (cols + _BLOCK - 1) // _BLOCK
    for b in prange(((rows + _BLOCK - 1) // _BLOCK) * col_blocks):
        r0 = (b // col_blocks) * _BLOCK
        c0 = (b % col_blocks) * _BLOCK
        r1 = min(rows, r0 + _BLOCK)
        c1 = min(cols, c0 + _BLOCK)
        for c in range(c0, c1):
            for r in range(r0, r1):
                out[c, r] = src[r, c] + shift[r]


@njit(**PJIT)
def weighted_row_sums(s, w, shift):
    """``shift[i] += w * sum_l s[i, l]`` (the Potts part of densecrf's energies)."""
    n, n_lab = s.shape
    for i in prange(n):
        tot = 0.0
        for k in range(n_lab):
            tot += s[i, k]
        shift[i] += w * tot


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
