"""Numba kernels of the mean-field iterations: row-wise softmax and its backward.

No checking here: :mod:`crfcore.meanfield` validates and allocates.
"""

import numpy as np
from numba import njit, prange

from ._config import PJIT


@njit(**PJIT)
def softmax_rows(z, out):
    """``out[i] = exp(z[i] - max z[i]) / sum exp(...)`` for every row ``i`` (may alias ``z``)."""
    n, n_lab = z.shape
    for i in prange(n):
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
            out[i, k] *= inv


@njit(**PJIT)
def softmax_rows_bwd(q, dq, out):
    """Vector-Jacobian product of the row softmax: ``out[i] = q[i] * (dq[i] - <q[i], dq[i]>)``."""
    n, n_lab = q.shape
    for i in prange(n):
        dot = 0.0
        for k in range(n_lab):
            dot += q[i, k] * dq[i, k]
        for k in range(n_lab):
            out[i, k] = q[i, k] * (dq[i, k] - dot)

