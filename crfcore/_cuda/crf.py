"""A dense CRF with any list of pairwise terms on a CUDA device (``device="cuda"`` of :func:`crfcore.crf`,
:func:`crfcore.crf_fwd`, :func:`crfcore.crf_bwd`).

:mod:`crfcore.terms` and :mod:`crfcore._engine.iterations` on device arrays: one :class:`CudaKernel` per term, the
same iterations (the messages past the second subtracted from the logits first, summed into one array where the
terms allow it and no residuals are kept) and the same exact backward, the messages taken two by two.
"""

from typing import NamedTuple

import numpy as np

from .._engine.iterations import Transform, tiny
from .._kernels import cuda_meanfield as MK
from .._validation import check_logits_shape_2d
from ..params import CheckedTerm, as_term, check_features_shape, check_term_params, check_terms_list, matrix, summable
from . import device as dev
from .inputs import check_finite, check_grad, check_logits, device_input
from .kernel import CudaFeatureGrad, CudaKernel


class CudaCrfResiduals(NamedTuple):
    """What :func:`backward` needs, on the device: the terms' kernels and the forward's iterates."""

    terms: list  # CheckedTerm per term, features a float64 device array
    features_on_device: tuple  # per term: its features were a device array (their gradient comes back as one)
    kernels: list  # CudaKernel per term
    dtype: np.dtype
    output: str
    q_in: object  # (T, N, L) device: Q_{t-1}
    messages: tuple  # one (T, N, L) device array per term: K_k Q_{t-1}
    q_out: object  # (N, L) device: Q_T
    on_device: bool  # the logits were a device array: the backward returns device arrays too


def _check_logits(logits):
    if np.ndim(logits) == 0 and not dev.is_device_array(logits):
        raise ValueError("`logits` is a scalar; pass an array of shape (N, L)")
    u, on_device = device_input(logits, "logits", float_only=True)
    check_logits_shape_2d(tuple(u.shape))
    check_logits(u)
    return u, on_device


def _features(features, i, n):
    """A term's features as a float64 device array ``(N, d)``, checked, and whether they were on the device."""
    name = f"terms[{i}].features"
    if not dev.is_device_array(features):
        f = np.asarray(features)
        if f.dtype.kind not in "fiu" or f.dtype == np.bool_:
            raise TypeError(f"`{name}` must be a real numeric array, got dtype {f.dtype}")
        check_features_shape(f.shape, i, n)
        f = np.ascontiguousarray(f, dtype=np.float64)
        if not np.isfinite(f).all():
            raise ValueError(f"`{name}` contains {int(np.size(f) - np.isfinite(f).sum())} NaN or infinite value(s); "
                             f"clean or clip it before calling")
        return dev.to_device(f), False
    f = dev.as_device_array(features, name)
    check_features_shape(tuple(f.shape), i, n)
    dtype = np.dtype(f.dtype)
    if dtype == np.float32:
        wide = dev.empty(tuple(f.shape), np.float64)
        dev.launch(MK.widen, int(np.prod(f.shape)), f.reshape(-1), wide.reshape(-1))
        f = wide
    elif dtype != np.float64:
        raise TypeError(f"`{name}` on the device must be float32 or float64, got {dtype}; convert it first")
    check_finite(f, name)
    return f, True


def forward(logits, terms, n_iter, output, keep_residuals):
    """Mean field of a CRF with pairwise ``terms`` on the device: ``(out, residuals)`` (see :func:`crfcore.crf_fwd`);
    ``out`` a device array when ``logits`` was one, else NumPy."""
    u, on_device = _check_logits(logits)
    n, n_lab = tuple(u.shape)
    dtype = np.dtype(u.dtype)
    terms = check_terms_list(terms)
    checked, on_dev = [], []
    for i, term in enumerate(terms):
        term = as_term(term, i)
        f, was_on_device = _features(term.features, i, n)
        checked.append(CheckedTerm(f, *check_term_params(term, i, n_lab), term.normalization))
        on_dev.append(was_on_device)
    kernels = [CudaKernel(t.features, t.normalization, dtype) for t in checked]
    n_k = len(kernels)
    fused = not keep_residuals and summable(checked)
    tr = Transform.of((checked[0].compat,) if fused else [matrix(t) for t in checked], dtype)
    mats = [dev.to_device(m) for m in tr.mats]
    zero = dev.to_device(tr.zero)
    has_b = not fused and n_k > 1
    a1, c1 = (mats[1], tr.coefs[1]) if has_b else (zero, dtype.type(0))
    eps = tiny(dtype)
    q = dev.empty((n, n_lab), dtype)  # Q_T
    if keep_residuals:
        q_in = dev.empty((n_iter, n, n_lab), dtype)
        trace = tuple(dev.empty((n_iter, n, n_lab), dtype) for _ in kernels)
    else:
        work = [dev.empty((n, n_lab), dtype) for _ in range(1 if fused else n_k)]
    dev.launch(MK.softmax, n, u, q_in[0] if keep_residuals and n_iter else q, eps)
    z = dev.empty((n, n_lab), dtype) if output == "logits" else None
    base = dev.empty((n, n_lab), dtype) if not fused and n_k > 2 else u  # U minus the messages past the second
    for t in range(n_iter):
        if keep_residuals:
            q_t, msgs = q_in[t], [m[t] for m in trace]
            q_next = q_in[t + 1] if t + 1 < n_iter else q
        else:
            q_t, msgs, q_next = q, work, q
        if fused:
            for k, kern in enumerate(kernels):
                kern.apply(q_t, msgs[0], scale=checked[k].weight, accumulate=k > 0)
        else:
            for kern, m in zip(kernels, msgs):
                kern.apply(q_t, m)
            src = u
            for k in range(2, n_k):
                dev.launch(MK.subtract_message, n, src, msgs[k], mats[k], tr.potts, tr.coefs[k], base)
                src = base
        store_z = z is not None and t == n_iter - 1
        dev.launch(MK.combine_softmax, n, base, msgs[0], msgs[1] if has_b else msgs[0], mats[0], a1, tr.potts,
                   tr.coefs[0], c1, has_b, z if store_z else msgs[0], store_z, q_next, eps)
    if output == "logits":
        if n_iter == 0:
            dev.copy(u, z)
        out = z
    else:
        out = q
        if keep_residuals:  # Q_T stays in the residuals: the caller gets its own copy
            out = dev.empty((n, n_lab), dtype)
            dev.copy(q, out)
    res = None
    if keep_residuals:
        res = CudaCrfResiduals(checked, tuple(on_dev), kernels, dtype, output, q_in, trace, q, on_device)
    return (out if on_device else dev.to_host(out)), res


def backward(res, grad, features):
    """The gradients of :func:`crfcore.crf_bwd` for device residuals: ``(d_logits, [dA_k], [df_k])``, ``dA_k``
    host float64, ``d_logits`` and each ``df_k`` on the device where the logits and the term's features were (None
    for every ``df_k`` without ``features``)."""
    dtype = res.dtype
    n_iter, n, n_lab = tuple(res.q_in.shape)
    g = check_grad(grad, (n, n_lab), dtype)
    eps = tiny(dtype)
    n_k = len(res.kernels)
    n_pairs = -(-n_k // 2)
    dz = dev.empty((n, n_lab), dtype)
    if res.output == "probs":
        dev.launch(MK.softmax_rows_bwd, n, res.q_out, g, dz, eps)
    else:
        dev.copy(g, dz)
    du = dev.zeros((n, n_lab), dtype)
    da = dev.zeros((2 * n_pairs, n_lab, n_lab), np.float64)  # a zero transform pads an odd count of terms
    tr = Transform.of([matrix(t) for t in res.terms], dtype)
    mats = [dev.to_device(m) for m in tr.mats] + [dev.to_device(tr.zero)] * (2 * n_pairs - n_k)
    coefs = list(tr.coefs) + [dtype.type(0)] * (2 * n_pairs - n_k)
    grads = [CudaFeatureGrad(k) for k in res.kernels] if features and n_iter else None
    ds = [dev.empty((n, n_lab), dtype) for _ in range(2 * n_pairs)]
    dq = [dev.empty((n, n_lab), dtype) for _ in range(max(2, n_k))]
    if n_k == 1:
        dev.fill(dq[1], 0)
    n_blocks = -(-n // MK.BLOCK_ROWS)
    partial = dev.empty((n_blocks, 2, n_lab, n_lab), np.float64)
    for t in range(n_iter - 1, -1, -1):
        msgs = [m[t] for m in res.messages]
        for j in range(n_pairs):  # Z = U - sum_k S_k A_k^T: du += dZ, dA_k = -dZ^T S_k, dS_k = -dZ A_k
            k0, k1 = 2 * j, 2 * j + 1
            dev.launch(MK.combine_bwd, n, dz, mats[k0], mats[k1], tr.potts, coefs[k0], coefs[k1], ds[k0], ds[k1],
                       du, j == 0)
            dev.launch(MK.outer_blocks, n_blocks * n_lab * n_lab, dz, msgs[k0], msgs[min(k1, n_k - 1)], partial)
            dev.launch(MK.sum_blocks, 2 * n_lab * n_lab, partial, da[k0:k0 + 2])
        for k, kern in enumerate(res.kernels):
            blurred = kern.apply(ds[k], dq[k], transpose=True)
            if grads:
                grads[k].add_message(res.q_in[t], msgs[k], ds[k], dq[k], blurred)
        for k in range(2, n_k):
            dev.launch(MK.add, n * n_lab, dq[k], dq[1])
        dev.launch(MK.iteration_bwd, n, res.q_in[t], dq[0], dq[1], dz, eps)
    dev.launch(MK.add, n * n_lab, dz, du)
    dfs = [None] * n_k
    if features:
        for k, term in enumerate(res.terms):
            df = grads[k].result(term.features) if grads else dev.zeros(tuple(term.features.shape), np.float64)
            dfs[k] = df if res.features_on_device[k] else dev.to_host(df)
    return (du if res.on_device else dev.to_host(du)), list(dev.to_host(da)[:n_k]), dfs
