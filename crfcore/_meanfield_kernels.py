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



@njit(inline="always", **JIT)
def _softmax_pair(z0, z1, q, i, tiny):
    """:func:`_softmax_row` for two labels, the same operations on scalars (one exp)."""
    if z1 > z0:
        e = np.exp(z0 - z1)
        inv = 1.0 / (e + 1.0)
        p0 = e * inv
        p1 = inv
    else:
        e = np.exp(z1 - z0)
        inv = 1.0 / (1.0 + e)
        p0 = inv
        p1 = e * inv
    q[i, 0] = p0 if p0 >= tiny else 0.0
    q[i, 1] = p1 if p1 >= tiny else 0.0


@njit(**PJIT)
def combine_softmax(u, s, b, a_s, a_b, potts, c_s, c_b, z, q, tiny):
    """Compatibility transform and softmax, fused: ``Z = U - S A_s^T - B A_b^T``, ``Q = softmax(Z)``.

    With ``potts`` the matrices are ``c_s (J - I)`` and ``c_b (J - I)`` and cost O(L) per pixel. Two labels
    (binary segmentation) take a scalar path: loops over a run-time label count cost more than the work.
    """
    n, n_lab = u.shape
    if n_lab == 2:
        for i in prange(n):
            s0, s1, b0, b1 = s[i, 0], s[i, 1], b[i, 0], b[i, 1]
            if potts:
                z0 = u[i, 0] - c_s * s1 - c_b * b1
                z1 = u[i, 1] - c_s * s0 - c_b * b0
            else:
                z0 = u[i, 0] - (a_s[0, 0] * s0 + a_b[0, 0] * b0) - (a_s[0, 1] * s1 + a_b[0, 1] * b1)
                z1 = u[i, 1] - (a_s[1, 0] * s0 + a_b[1, 0] * b0) - (a_s[1, 1] * s1 + a_b[1, 1] * b1)
            z[i, 0] = z0
            z[i, 1] = z1
            _softmax_pair(z0, z1, q, i, tiny)
        return
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
