"""Numba kernels of the mean-field iterations: row-wise softmax and its backward.

No checking here: :mod:`crfcore.inference` validates and allocates.

``tiny``: probabilities and gradient entries below it (the smallest normal float) are set to zero. Saturated
softmaxes (logit gaps beyond ~87 in float32) produce subnormal floats, which CPUs process up to a hundred times
slower; TensorFlow flushes subnormals to zero for the same reason.
"""

import numpy as np
from numba import njit, prange

from ._config import JIT, PJIT


@njit(inline="always", **JIT)
def _softmax_row(z, out, i, tiny):
    """Row ``i`` of the numerically stable softmax: ``out[i] = exp(z[i] - max z[i]) / sum exp(...)``."""
    n_lab = z.shape[1]
    mx = z[i, 0]
    for k in range(1, n_lab):
        if z[i, k] > mx:
            mx = z[i, k]
    s = 0.0
    for k in range(n_lab):
        e = np.exp(z[i, k] - mx)
        out[i, k] = e
        s += e
    inv = 1.0 / s
    for k in range(n_lab):
        p = out[i, k] * inv
        out[i, k] = p if p >= tiny else 0.0


@njit(**PJIT)
def softmax_rows(z, out, tiny):
    """The softmax of every row of ``z`` into ``out`` (which may alias ``z``)."""
    for i in prange(z.shape[0]):
        _softmax_row(z, out, i, tiny)


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



@njit(**PJIT)
def combine_softmax(u, s, b, a_s, a_b, potts, c_s, c_b, z, q, tiny):
    """Compatibility transform and softmax, fused: ``Z = U - S A_s^T - B A_b^T``, ``Q = softmax(Z)``.

    With ``potts`` the matrices are ``c_s (J - I)`` and ``c_b (J - I)`` and cost O(L) per pixel.
    """
    n, n_lab = u.shape
    for i in prange(n):
        if potts:
            ts = 0.0
            tb = 0.0
            for k in range(n_lab):
                ts += s[i, k]
                tb += b[i, k]
            for k in range(n_lab):
                z[i, k] = u[i, k] - c_s * (ts - s[i, k]) - c_b * (tb - b[i, k])
        else:
            for k in range(n_lab):
                acc = u[i, k]
                for j in range(n_lab):
                    acc -= a_s[k, j] * s[i, j] + a_b[k, j] * b[i, j]
                z[i, k] = acc
        _softmax_row(z, q, i, tiny)


@njit(**PJIT)
def combine_bwd(dz, a_s, a_b, potts, c_s, c_b, ds, db):
    """Backward of the compatibility transform (without its sign): ``dS = dZ A_s``, ``dB = dZ A_b``."""
    n, n_lab = dz.shape
    for i in prange(n):
        if potts:
            tot = 0.0
            for k in range(n_lab):
                tot += dz[i, k]
            for k in range(n_lab):
                ds[i, k] = c_s * (tot - dz[i, k])
                db[i, k] = c_b * (tot - dz[i, k])
        else:
            for k in range(n_lab):
                acc_s = 0.0
                acc_b = 0.0
                for j in range(n_lab):
                    acc_s += dz[i, j] * a_s[j, k]
                    acc_b += dz[i, j] * a_b[j, k]
                ds[i, k] = acc_s
                db[i, k] = acc_b
