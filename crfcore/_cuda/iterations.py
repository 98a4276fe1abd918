"""The mean-field iterations of a dense CRF with any number of Gaussian kernels on a CUDA device, forward and
backward: :mod:`crfcore._engine.iterations` on device arrays, the one iteration loop of ``device="cuda"`` (under
:func:`crfcore.crf_fwd` with any pairwise terms and :func:`crfcore.meanfield_fwd` with its two).

With ``S_k = K_k Q`` the normalised message of kernel ``k`` and ``A_k`` its ``(L, L)`` label transform::

    Z = U - sum_k S_k A_k^T,    Q = softmax(Z)

The messages past the second are subtracted from ``U`` first (``subtract_message``), the first two go through the
fused compatibility + softmax kernel; with ``weights`` (every ``A_k = w_k M``, no residuals kept) the kernels add
into one message array. The backward reverses the iterations and takes the messages two by two through
``combine_bwd`` and ``outer_blocks`` (a zero transform pads an odd count), ``du += dZ`` with the first pair only.
The transforms are the CPU's :class:`~crfcore._engine.iterations.Transform`, copied to the device here.
"""

import numpy as np

from .._engine.iterations import tiny
from .._kernels import cuda_meanfield as CK
from . import device as dev


def _device_transform(tr, count):
    """``tr``'s matrices as device arrays and their Potts coefficients, padded to ``count`` with its zero matrix
    (an absent kernel: zero coefficient)."""
    pad = max(0, count - len(tr.mats))
    zero = [dev.to_device(tr.zero)] * pad
    return [dev.to_device(m) for m in tr.mats] + zero, list(tr.coefs) + [tr.zero.dtype.type(0)] * pad


def forward_one(u, kernels, tr, n_iter, trace=None, q=None, z=None, weights=None):
    """Mean field on one problem: ``u`` ``(N, L)`` device logits, ``kernels`` a sequence of
    :class:`~crfcore._cuda.kernel.CudaKernel`, ``tr`` a :class:`~crfcore._engine.iterations.Transform`; returns
    ``(z, q)``.

    ``trace``, if given, is ``(q_in, messages)``: ``q_in`` ``(T, N, L)`` and one ``(T, N, L)`` device array per
    kernel; the iterations run in them (``Q_{t-1}`` and ``K_k Q_{t-1}``, nothing copied). ``q``, if given, is where
    ``Q_T`` goes (else a new array). ``z``, if given, is where ``Z_T`` goes (``u`` after no iterations); None skips
    it. ``weights`` (not with ``trace``), if given, are scalar ``w_k`` with ``tr`` the transform of the common matrix
    ``M`` alone: the kernels then add into one message array ``sum_k w_k K_k Q``. With ``n_iter`` 0 the kernels are
    not used (they may be None).
    """
    n, n_lab = tuple(u.shape)
    dtype = np.dtype(u.dtype)
    eps = tiny(dtype)
    q = dev.empty((n, n_lab), dtype) if q is None else q
    dev.launch(CK.softmax, n, u, trace[0][0] if trace is not None and n_iter else q, eps)
    if n_iter == 0:
        if z is not None:
            dev.copy(u, z)
        return z, q
    fused = weights is not None
    mats, coefs = _device_transform(tr, 2)
    if trace is None:  # else each iteration's messages are its trace slots
        msgs = [dev.empty((n, n_lab), dtype) for _ in range(1 if fused else len(kernels))]
    base = dev.empty((n, n_lab), dtype) if not fused and len(kernels) > 2 else u  # U minus the messages past the second
    for t in range(n_iter):
        if trace is not None:
            q_t, msgs = trace[0][t], [m[t] for m in trace[1]]
            q_next = trace[0][t + 1] if t + 1 < n_iter else q
        else:
            q_t = q_next = q
        if fused:
            for k, kern in enumerate(kernels):
                kern.apply(q_t, msgs[0], scale=weights[k], accumulate=k > 0)
        else:
            for kern, m in zip(kernels, msgs):
                kern.apply(q_t, m)
        store_z = z is not None and t == n_iter - 1
        _update(u, msgs, mats, coefs, tr.potts, base, z if store_z else msgs[0], store_z, q_next, eps)
    return z, q


def _update(u, msgs, mats, coefs, potts, base, z, store_z, q, eps):
    """The iteration's update from its messages: ``Z = U - sum_k S_k A_k^T`` (into ``z`` where ``store_z``) and
    ``Q = softmax(Z)`` (into ``q``); the messages past the second are subtracted into ``base`` first. One message
    (one kernel, or the summed ones) leaves the second part out."""
    n = tuple(u.shape)[0]
    src = u
    for k in range(2, len(msgs)):
        dev.launch(CK.subtract_message, n, src, msgs[k], mats[k], potts, coefs[k], base)
        src = base
    has_b = len(msgs) > 1
    dev.launch(CK.combine_softmax, n, src, msgs[0], msgs[1] if has_b else msgs[0], mats[0], mats[1], potts,
               coefs[0], coefs[1], has_b, z, store_z, q, eps)


def backward_one(dz, kernels, tr, q_in, msgs, feature_grads=None, da=None):
    """Reverse the iterations of one problem from ``dZ_T`` (a device array, overwritten: it carries ``dZ_t``
    back); returns ``(dU, dA)``: ``dU`` a new device array, ``dA`` the float64 device array ``(2 ceil(K/2), L, L)``
    of the transforms' gradients (a zero transform pads an odd count ``K``), accumulated into ``da`` when given.

    ``q_in`` and ``msgs`` hold the forward's iterates (``(T, N, L)``, one message array per kernel).
    ``feature_grads``, if given, is a :class:`~crfcore._cuda.kernel.CudaFeatureGrad` per kernel that accumulates
    the kernels' features gradient along the way.
    """
    n_iter, n, n_lab = tuple(q_in.shape)
    dtype = np.dtype(dz.dtype)
    eps = tiny(dtype)
    n_k = len(kernels)
    n_pairs = -(-n_k // 2)
    du = dev.zeros((n, n_lab), dtype)
    if da is None:
        da = dev.zeros((2 * n_pairs, n_lab, n_lab), np.float64)
    mats, coefs = _device_transform(tr, 2 * n_pairs)
    ds = [dev.empty((n, n_lab), dtype) for _ in range(2 * n_pairs)]
    dq = [dev.empty((n, n_lab), dtype) for _ in range(max(2, n_k))]
    if n_k == 1:
        dev.fill(dq[1], 0)
    n_blocks = -(-n // CK.BLOCK_ROWS)
    partial = dev.empty((n_blocks, 2, n_lab, n_lab), np.float64)
    for t in range(n_iter - 1, -1, -1):
        msgs_t = [m[t] for m in msgs]
        for j in range(n_pairs):  # Z = U - sum_k S_k A_k^T: du += dZ, dA_k = -dZ^T S_k, dS_k = -dZ A_k
            k0, k1 = 2 * j, 2 * j + 1
            dev.launch(CK.combine_bwd, n, dz, mats[k0], mats[k1], tr.potts, coefs[k0], coefs[k1], ds[k0], ds[k1],
                       du, j == 0)
            dev.launch(CK.outer_blocks, n_blocks * n_lab * n_lab, dz, msgs_t[k0], msgs_t[min(k1, n_k - 1)], partial)
            dev.launch(CK.sum_blocks, 2 * n_lab * n_lab, partial, da[k0:k0 + 2])
        for k, kern in enumerate(kernels):
            blurred = kern.apply(ds[k], dq[k], transpose=True)
            if feature_grads:
                feature_grads[k].add_message(q_in[t], msgs_t[k], ds[k], dq[k], blurred)
        for k in range(2, n_k):
            dev.launch(CK.add, n * n_lab, dq[k], dq[1])
        dev.launch(CK.iteration_bwd, n, q_in[t], dq[0], dq[1], dz, eps)
    dev.launch(CK.add, n * n_lab, dz, du)
    return du, da
