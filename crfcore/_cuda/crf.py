"""A dense CRF with any list of pairwise terms on a CUDA device (``device="cuda"`` of :func:`crfcore.crf`,
:func:`crfcore.crf_fwd`, :func:`crfcore.crf_bwd`), and the path :mod:`crfcore._cuda.meanfield` runs its two terms
through.

:mod:`crfcore.terms` on device arrays: the inputs checked, one :class:`CudaKernel` per term, then the iterations of
:mod:`crfcore._cuda.iterations` (the messages summed into one array where the terms allow it and no residuals are
kept) and their exact backward.
"""

from typing import NamedTuple

import numpy as np

from .._engine.iterations import Transform, tiny
from .._kernels import cuda_meanfield as CK
from .._validation import check_finite as check_finite_host
from .._validation import check_logits_shape_2d
from ..params import CheckedTerm, as_term, check_features_shape, check_term_params, check_terms_list, matrix, summable
from . import device as dev
from .inputs import check_finite, check_grad, check_logits, device_input
from .iterations import backward_one, forward_one
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
        check_finite_host(f, name)
        return dev.to_device(f), False
    f = dev.as_device_array(features, name)
    check_features_shape(tuple(f.shape), i, n)
    dtype = np.dtype(f.dtype)
    if dtype == np.float32:
        wide = dev.empty(tuple(f.shape), np.float64)
        dev.launch(CK.widen, int(np.prod(f.shape)), f.reshape(-1), wide.reshape(-1))
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
    checked, on_dev = [], []
    for i, term in enumerate(check_terms_list(terms)):
        term = as_term(term, i)
        f, was_on_device = _features(term.features, i, n)
        checked.append(CheckedTerm(f, *check_term_params(term, i, n_lab), term.normalization))
        on_dev.append(was_on_device)
    out, res = forward_checked(u, checked, tuple(on_dev), n_iter, output, keep_residuals, on_device)
    return (out if on_device else dev.to_host(out)), res


def forward_checked(u, terms, features_on_device, n_iter, output, keep_residuals, on_device, kernels=None,
                    out=None):
    """:func:`forward` of checked arguments: ``u`` ``(N, L)`` device logits, ``terms`` :class:`CheckedTerm`\\ s with
    float64 device features; ``features_on_device`` and ``on_device`` (the caller's inputs were device arrays) go
    to the residuals. ``kernels``: the terms' :class:`CudaKernel`\\ s where the caller built them (else built here;
    None each is allowed with ``n_iter`` 0). The output goes to ``out`` (device, ``(N, L)``) when given. Returns
    ``(out, residuals)``, ``out`` a device array."""
    n, n_lab = tuple(u.shape)
    dtype = np.dtype(u.dtype)
    if kernels is None:
        kernels = [CudaKernel(t.features, t.normalization, dtype) for t in terms]
    fused = not keep_residuals and summable(terms)
    tr = Transform.of((terms[0].compat,) if fused else [matrix(t) for t in terms], dtype)
    trace = None
    if keep_residuals:
        trace = (dev.empty((n_iter, n, n_lab), dtype), tuple(dev.empty((n_iter, n, n_lab), dtype) for _ in kernels))
    probs = output == "probs"
    z = None if probs else dev.empty((n, n_lab), dtype) if out is None else out
    q = out if probs and not keep_residuals else None
    z, q = forward_one(u, kernels, tr, n_iter, trace, q, z, [t.weight for t in terms] if fused else None)
    result = q if probs else z
    if probs and keep_residuals:  # Q_T stays in the residuals: the caller gets its own copy
        result = dev.empty((n, n_lab), dtype) if out is None else out
        dev.copy(q, result)
    if not keep_residuals:
        return result, None
    return result, CudaCrfResiduals(terms, tuple(features_on_device), kernels, dtype, output, trace[0], trace[1], q,
                                    on_device)


def backward(res, grad, features):
    """The gradients of :func:`crfcore.crf_bwd` for device residuals: ``(d_logits, [dA_k], [df_k])``, ``dA_k``
    host float64, ``d_logits`` and each ``df_k`` on the device where the logits and the term's features were (None
    for every ``df_k`` without ``features``)."""
    g = check_grad(grad, tuple(res.q_out.shape), res.dtype)
    du, da, dfs = backward_checked(res, g, features)
    dfs = [df if df is None or on else dev.to_host(df) for df, on in zip(dfs, res.features_on_device)]
    return (du if res.on_device else dev.to_host(du)), list(dev.to_host(da)[:len(res.terms)]), dfs


def backward_checked(res, g, features, da=None):
    """:func:`backward` of a checked ``grad`` ``g`` (an ``(N, L)`` device array of the forward's dtype): ``(du,
    da, [df_k])``, all on the device: ``da`` the float64 ``(2 ceil(K/2), L, L)`` transforms' gradients, added into
    ``da`` when given (see :func:`~crfcore._cuda.iterations.backward_one`), ``df_k`` float64 (None without
    ``features``)."""
    n_iter = tuple(res.q_in.shape)[0]
    dz = dev.empty(tuple(g.shape), res.dtype)
    if res.output == "probs":
        dev.launch(CK.softmax_rows_bwd, tuple(g.shape)[0], res.q_out, g, dz, tiny(res.dtype))
    else:
        dev.copy(g, dz)
    tr = Transform.of([matrix(t) for t in res.terms], res.dtype)
    grads = [CudaFeatureGrad(k) for k in res.kernels] if features and n_iter else None
    du, da = backward_one(dz, res.kernels, tr, res.q_in, res.messages, grads, da)
    dfs = [None] * len(res.terms)
    if features:
        dfs = [grads[k].result(t.features) if grads else dev.zeros(tuple(t.features.shape), np.float64)
               for k, t in enumerate(res.terms)]
    return du, da, dfs
