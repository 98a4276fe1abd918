"""The mean-field iterations of a dense CRF with any number of Gaussian kernels, forward and backward.

One engine under :func:`crfcore.meanfield` (two kernels: spatial and bilateral) and :func:`crfcore.crf_fwd` (any list
of pairwise terms, which the pydensecrf drop-in uses). With ``S_k = K_k Q`` the normalised message of kernel ``k``
and ``A_k`` its ``(L, L)`` label transform (Krähenbühl & Koltun 2011, eq. 4; Zheng et al. 2015)::

    Z = U - sum_k S_k A_k^T,    Q = softmax(Z)

Two kernels go through the fused compatibility + softmax kernel directly; further kernels' messages are subtracted
from ``U`` first. When every ``A_k = w_k M`` for one matrix ``M`` and no residuals are kept, the messages are summed
into one array (``sum_k w_k S_k``, read once). The backward reverses the iterations (densecrf's
``DenseCRF::gradient``).
"""

from typing import NamedTuple

import numpy as np

from .._kernels import meanfield as MK
from .._runtime import parallel as _parallel
from .kernel import share_workspace


class Transform(NamedTuple):
    """The label transforms ``A_k`` in the compute dtype, and their Potts shortcut ``c_k (J - I)`` if exact for all."""

    mats: tuple  # (L, L) arrays, one per kernel
    potts: bool
    coefs: tuple  # c_k, in the compute dtype (meaningful when potts)
    zero: np.ndarray  # an (L, L) zero matrix: the absent second kernel

    @classmethod
    def of(cls, mats, dtype):
        off = 1.0 - np.eye(mats[0].shape[0])  # Potts: c_k (J - I)
        coefs = [m[0, 1] for m in mats]
        is_potts = all(bool(np.array_equal(m, c * off)) for m, c in zip(mats, coefs))
        return cls(tuple(np.ascontiguousarray(m, dtype=dtype) for m in mats), is_potts,
                   tuple(dtype.type(c) for c in coefs), np.zeros(mats[0].shape, dtype))

    def pair(self, k):
        """``(A_k, c_k)``, or the zero matrix where kernel ``k`` does not exist."""
        if k < len(self.mats):
            return self.mats[k], self.coefs[k]
        return self.zero, self.zero.dtype.type(0)


def tiny(dtype):
    """Values below this are flushed to zero in the softmax and its backward (see ``crfcore._kernels.meanfield``)."""
    return np.finfo(dtype).tiny  # the smallest normal number: flush subnormals only


def combine_softmax(u, s, b, a_s, a_b, potts, c_s, c_b, z, q, eps):
    """``Z = U - S A_s^T - B A_b^T``, ``Q = softmax(Z)`` (see :func:`~crfcore._kernels.meanfield.combine_softmax`),
    through the two-label kernel where it applies."""
    kernel = MK.combine_softmax_pair if u.shape[1] == 2 else MK.combine_softmax
    kernel(u, s, b, a_s, a_b, potts, c_s, c_b, z, q, eps)


def softmax(u, q):
    """``q = softmax(u)`` row by row (``q`` may be ``u``), through the iterations' own kernel with zero messages
    (the same compiled code as an iteration, and the same arithmetic: no separate softmax kernel to compile).

    The messages are an array of zeros, never ``u`` itself with a zero matrix: ``0 * -inf`` (an impossible label's
    logit) is NaN. ``np.zeros`` maps the operating system's zero page, so reading it costs little. The zero
    transform is given as Potts with coefficient 0, which costs O(L) a pixel (a general ``(L, L)`` matrix costs
    O(L²): 30 ms of a 512x512 call at 21 labels) and gives the same ``Z = U`` exactly."""
    zero = np.zeros((u.shape[1], u.shape[1]), u.dtype)
    absent = np.empty((0, u.shape[1]), u.dtype)
    c = u.dtype.type(0)
    combine_softmax(u, np.zeros(u.shape, u.dtype), absent, zero, zero, True, c, c, absent, q, tiny(u.dtype))


def forward_one(u, kernels, tr, n_iter, trace=None, q=None, want_z=True, weights=None):
    """Mean field on one image: ``u`` ``(N, L)``, ``kernels`` a sequence of :class:`~crfcore._engine.kernel.Kernel`, ``tr``
    a :class:`Transform`; returns ``(Z_T, Q_T)``.

    ``trace``, if given, is ``(q_in, messages)``: ``q_in`` ``(T, N, L)`` and one ``(T, N, L)`` array per kernel,
    filled with the iterates. ``q``, if given, is where ``Q_T`` goes. ``want_z=False`` skips storing ``Z`` (None is
    returned for it). ``weights``, if given, are scalar ``w_k`` with ``tr`` the transform of the common matrix ``M``
    alone: the kernels then add into one message array ``sum_k w_k K_k Q`` (one array, read once).
    """
    q = np.empty_like(u) if q is None else q
    softmax(u, q)
    if n_iter == 0:
        return (u if want_z else None), q
    share_workspace(kernels, u.shape[1], u.dtype)
    absent = np.empty((0, u.shape[1]), u.dtype)  # an array without rows: "not stored" to combine_softmax
    z = np.empty_like(u) if want_z else absent
    fused = weights is not None
    if trace is None:  # else each iteration's messages are its trace slots
        msgs = [np.empty_like(u) for _ in range(1 if fused else len(kernels))]
    base = np.empty_like(u) if not fused and len(kernels) > 2 else u  # U minus the messages past the second
    for t in range(n_iter):
        _parallel.checkpoint()
        if trace is not None:
            trace[0][t] = q
            msgs = [m[t] for m in trace[1]]
        if fused:
            for k, kern in enumerate(kernels):
                kern.apply(q, msgs[0], scale=weights[k], accumulate=k > 0)
        else:
            for kern, m in zip(kernels, msgs):
                kern.apply(q, m)
        _update(u, msgs, tr, base, z, q, fused)
    return (z if want_z else None), q


def _update(u, msgs, tr, base, z, q, fused=False):
    """The iteration's update from its messages: ``Z = U - sum_k S_k A_k^T`` (into ``z`` where it has rows) and
    ``Q = softmax(Z)`` (into ``q``); the messages past the second are subtracted into ``base`` first. ``fused``:
    ``msgs`` is the one array of summed, weighted messages and ``tr`` the transform of their common matrix."""
    src = u
    for k in range(2, len(msgs)):
        MK.subtract_message(src, msgs[k], tr.mats[k], tr.potts, tr.coefs[k], base)
        src = base
    a0, c0 = tr.pair(0)
    a1, c1 = (tr.zero, tr.zero.dtype.type(0)) if fused else tr.pair(1)
    second = msgs[1] if len(msgs) > 1 else np.empty((0, u.shape[1]), u.dtype)
    combine_softmax(src, msgs[0], second, a0, a1, tr.potts, c0, c1, z, q, tiny(u.dtype))


def filter_all(q, kernels, msgs):
    """The messages ``K_k Q`` of ``q`` ``(N, L)`` into ``msgs``, one array per kernel."""
    share_workspace(kernels, q.shape[1], q.dtype)
    for kern, m in zip(kernels, msgs):
        kern.apply(q, m)


def backward_one(dz, kernels, tr, q_in, msgs, feature_grads=None):
    """Reverse the iterations of one image from ``dZ_T``; returns ``(dU, [dA_k])`` (float64 ``dA_k``).

    ``msgs`` holds the forward's messages, one ``(T, N, L)`` array per kernel. ``feature_grads``, if given, is a
    :class:`~crfcore._engine.kernel.FeatureGrad` per kernel that accumulates the kernels' features gradient along the way.

    No BLAS: the ``dZ^T S`` products are fused into :func:`combine_bwd` (multi-threaded BLAS had left its
    threads spinning beside Numba's, and single-threaded BLAS was the backward's largest cost).
    """
    n_k = len(kernels)
    du = np.zeros_like(dz)  # the kernels kept the workspace the forward gave them
    n_blocks = -(-dz.shape[0] // MK.BWD_ROWS)
    partial = np.empty((n_blocks, 2) + tr.mats[0].shape, dtype=dz.dtype)
    da = [np.zeros(tr.mats[0].shape) for _ in range(n_k)]
    ds = [np.empty_like(dz) for _ in range(max(2, n_k))]
    dq = [np.empty_like(dz) for _ in range(max(2, n_k))]
    if n_k == 1:
        dq[1].fill(0)
    a0, c0 = tr.pair(0)
    a1, c1 = tr.pair(1)
    for t in range(q_in.shape[0] - 1, -1, -1):
        _parallel.checkpoint()
        # Z = U - sum_k S_k A_k^T: du += dZ, dA_k = -dZ^T S_k, dS_k = -dZ A_k (sign folded into iteration_bwd)
        second = msgs[1][t] if n_k > 1 else msgs[0][t]  # one kernel: a zero A_1 makes the second part vanish
        MK.combine_bwd(dz, msgs[0][t], second, a0, a1, tr.potts, c0, c1, ds[0], ds[1], du, partial)
        total = partial.sum(axis=0, dtype=np.float64)
        da[0] -= total[0]
        if n_k > 1:
            da[1] -= total[1]
        for k in range(2, n_k):
            MK.message_bwd(dz, msgs[k][t], tr.mats[k], tr.potts, tr.coefs[k], ds[k], partial)
            da[k] -= partial[:, 0].sum(axis=0, dtype=np.float64)
        for k, kern in enumerate(kernels):
            kern.apply(ds[k], dq[k], transpose=True)
            if feature_grads is not None:  # before the next kernel's filtering takes the shared workspace
                feature_grads[k].add_message(q_in[t], msgs[k][t], ds[k], dq[k])
        for k in range(2, n_k):
            dq[1] += dq[k]
        MK.iteration_bwd(q_in[t], dq[0], dq[1], dz, tiny(dz.dtype))
    du += dz
    return du, da
