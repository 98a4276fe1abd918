"""Numba compilation settings shared by every kernel of crfcore.

Kept in one place (as stumpy's ``config.py`` does) so that a change of policy is one edit.
``fastmath`` leaves out ``nnan`` and ``ninf``: infinities and NaN checks keep working.
"""

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Options for serial kernels.
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH)

#: Options for kernels with a ``prange`` loop.
PJIT = dict(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)

#: The lattice embedding: no fastmath, so its float64 arithmetic is plain IEEE in a fixed order. Points on a
#: simplex boundary (pixel grids) then round the same way in every implementation of the same steps (the
#: pure-TensorFlow lattice in adapters/tf_lattice.py repeats them), so all of them build the same lattice.
PJIT_EXACT = dict(nogil=True, cache=True, parallel=True)

#: Serial kernels that call the embedding. A kernel called from another is compiled in its caller's context:
#: a fastmath caller would give the embedding fastmath arithmetic (seen: a different simplex for points on a
#: three-way tie), so its callers must be exact too.
JIT_EXACT = dict(nogil=True, cache=True)
