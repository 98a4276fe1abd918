"""A dense CRF with any list of pairwise terms, each with its own features, weight, compatibility and normalisation.

:func:`crfcore.meanfield` is the special case of two terms (pixel positions, and positions with colours); this is the
general form that densecrf's ``addPairwiseEnergy`` offers (any features: volumes, depth, optical flow, ...), forward
and exact backward, on the same engine (:mod:`crfcore._engine.iterations`). Term ``k`` contributes ``mu_k W_k K_k Q`` to the
energy, ``K_k`` the Gaussian kernel of its features (normalised), ``W_k`` its weight (a number or ``(L, L)``) and
``mu_k`` its compatibility (Potts ``1 - I`` by default)::

    Z = logits - sum_k (K_k Q) (mu_k W_k)^T,    Q = softmax(Z)
"""

from typing import NamedTuple

import numpy as np

from ._runtime import parallel as _parallel
from ._engine.iterations import Transform, backward_one, filter_all, forward_one, tiny
from ._engine.kernel import FeatureGrad, Kernel
from ._kernels import meanfield as MK
from ._validation import (as_float_array, check_backward_device, check_device, check_finite, check_logits_shape_2d,
                          check_logits_values)
from .params import (DEFAULTS, CheckedTerm, PairwiseTerm, as_term, check_features_shape, check_n_iter,  # noqa: F401
                     check_term_params, check_terms_list, matrix, summable)  # PairwiseTerm: crfcore.terms.PairwiseTerm, as documented

OUTPUTS = ("probs", "logits")


class TermGrads(NamedTuple):
    """Gradients w.r.t. one term, each in its input's form; ``features`` None unless asked for."""

    weight: object
    compat: np.ndarray
    features: np.ndarray = None


class CrfGrads(NamedTuple):
    logits: np.ndarray
    terms: list  # one TermGrads per term


class CrfResiduals(NamedTuple):
    model: "CrfModel"
    output: str
    q_in: np.ndarray  # (T, N, L)
    messages: tuple  # one (T, N, L) array per term
    q_out: np.ndarray


def _check_term(term, i, n, n_labels):
    term = as_term(term, i)
    f = as_float_array(term.features, f"terms[{i}].features", dtype=np.float64)
    check_features_shape(f.shape, i, n)
    check_finite(f, f"terms[{i}].features")
    return CheckedTerm(f, *check_term_params(term, i, n_labels), term.normalization)


def _check_logits(logits):
    u = as_float_array(logits, "logits")
    check_logits_shape_2d(u.shape)
    check_logits_values(u, "logits")
    return u


def check_run(n_iter, output):
    """``n_iter`` (an int >= 0) and ``output`` (one of :data:`OUTPUTS`) of a forward; returns ``int(n_iter)``."""
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}, got {output!r}")
    return check_n_iter(n_iter)


def term_grads(terms, da, dfs, n_labels):
    """A :class:`TermGrads` per term from ``dA_k`` (the gradients of the transforms ``A_k = mu_k W_k``) and the
    features' gradients ``dfs`` (None entries where not asked for)."""
    out = []
    for t, dak, df in zip(terms, da, dfs):
        w = t.weight if np.ndim(t.weight) else t.weight * np.eye(n_labels)
        d_compat = dak @ w.T
        d_w = t.compat.T @ dak
        out.append(TermGrads(float(np.trace(d_w)) if np.ndim(t.weight) == 0 else d_w, d_compat, df))
    return out


class CrfModel:
    """The kernels of a list of pairwise terms, built once for ``N`` points and ``L`` labels, reused by every call.

    Parameters
    ----------
    terms : sequence of PairwiseTerm
    n_points, n_labels : int
    dtype : float32 or float64
        The compute dtype (logits are converted to it).
    """

    def __init__(self, terms, n_points, n_labels, dtype=np.float32):
        terms = check_terms_list(terms)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"`dtype` must be float32 or float64, got {dtype}")
        self._setup([_check_term(t, i, n_points, n_labels) for i, t in enumerate(terms)], n_points, n_labels, dtype)

    @classmethod
    def of_checked(cls, terms, n_points, n_labels, dtype, kernels=None):
        """The model of terms already checked (:class:`~crfcore.params.CheckedTerm`, features ``(N, d)`` float64)
        in the compute ``dtype``, with their kernels when the caller built them (else built here)."""
        model = cls.__new__(cls)
        model._setup(list(terms), n_points, n_labels, np.dtype(dtype), kernels)
        return model

    def _setup(self, terms, n_points, n_labels, dtype, kernels=None):
        self.dtype = dtype
        self.terms = terms
        self.num_points, self.num_labels = int(n_points), int(n_labels)
        self.kernels = list(kernels) if kernels is not None else _parallel.run(self._build)
        self.transform = Transform.of([matrix(t) for t in self.terms], self.dtype)
        self._fused = (Transform.of((self.terms[0].compat,), self.dtype), [t.weight for t in self.terms]) \
            if summable(self.terms) else None

    def _build(self):
        return [Kernel(t.features, t.normalization, self.dtype) for t in self.terms]

    def _logits(self, logits):
        u = _check_logits(logits)
        if u.shape != (self.num_points, self.num_labels):
            raise ValueError(f"`logits` must have shape ({self.num_points}, {self.num_labels}) to match the terms, "
                             f"got {u.shape}")
        return np.ascontiguousarray(u, dtype=self.dtype)

    def forward(self, logits, n_iter=DEFAULTS["n_iter"], output="probs", keep_residuals=False):
        """Mean field from ``softmax(logits)``: ``(out, residuals)``, ``out`` ``Q_T`` or ``Z_T`` (``output``)."""
        n_iter = check_run(n_iter, output)
        u = self._logits(logits)
        return _parallel.run(self.run_forward, u, n_iter, output, bool(keep_residuals))

    def run_forward(self, u, n_iter, output, keep_residuals, out=None):
        """:meth:`forward` of checked arguments (``u`` C-contiguous ``(N, L)`` in the compute dtype), in the calling
        thread (crfcore's compute thread); the output goes to ``out`` when given. Without residuals, terms that
        :func:`~crfcore.params.summable` allows add their messages into one array."""
        trace = None
        if keep_residuals:
            shape = (n_iter, self.num_points, self.num_labels)
            trace = (np.empty(shape, self.dtype), tuple(np.empty(shape, self.dtype) for _ in self.kernels))
        tr, weights = (self.transform, None) if keep_residuals or self._fused is None else self._fused
        probs = output == "probs"
        z, q = forward_one(u, self.kernels, tr, n_iter, trace, out if probs and not keep_residuals else None,
                           not probs, weights)
        result = q if probs else z
        if out is not None:
            if result is not out:
                out[...] = result
            result = out
        elif result is u or keep_residuals and probs:  # u stays the caller's, Q_T the residuals'
            result = result.copy()
        return result, (CrfResiduals(self, output, trace[0], trace[1], q) if keep_residuals else None)

    def messages(self, q):
        """``[K_k Q]`` for a given ``Q`` ``(N, L)`` (one mean-field step's messages, e.g. for densecrf's
        ``klDivergence``)."""
        q = self._logits(q)
        msgs = [np.empty_like(q) for _ in self.kernels]
        _parallel.run(filter_all, q, self.kernels, msgs)
        return msgs

    def matrices(self):
        """The label transforms ``A_k = mu_k W_k`` (float64), as in ``Z = logits - sum_k (K_k Q) A_k^T``."""
        return [matrix(t) for t in self.terms]


def crf_fwd(logits, terms, *, n_iter=DEFAULTS["n_iter"], output="probs", keep_residuals=True, device="cpu"):
    """Mean-field forward of a dense CRF with any pairwise terms, returning the output and the residuals.

    Parameters
    ----------
    logits : array_like, shape (N, L)
        Unnormalised class scores of ``N`` points (any layout flattened): the unary potential is ``-logits``.
        float32 or float64 (the compute dtype).
    terms : sequence of PairwiseTerm
        The pairwise terms; each term's ``features`` are ``(N, d)`` (any ``d``), already divided by the kernel's
        widths (:func:`crfcore.features.positions` makes pixel positions).
    n_iter : int
    output : {"probs", "logits"}
    keep_residuals : bool
        False: inference only (residuals None); terms with scalar weights and a common compatibility then sum
        their messages into one array, as :func:`crfcore.meanfield` does.
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"`` runs on an NVIDIA GPU (``pip install 'crfcore[cuda]'``; see :func:`crfcore.meanfield`).
        ``logits`` and each term's ``features`` may then be device arrays (``__cuda_array_interface__``: used in
        place); the output is a Numba device array when ``logits`` is one. Up to 15 feature dimensions per term.

    Returns
    -------
    out : ndarray (N, L)
    residuals : CrfResiduals or None
        With ``device="cuda"``, a ``CudaCrfResiduals`` on the device.
    """
    if check_device(device) == "cuda":
        n_iter = check_run(n_iter, output)
        return _cuda().forward(logits, terms, n_iter, output, bool(keep_residuals))
    u = _check_logits(logits)
    model = CrfModel(terms, u.shape[0], u.shape[1], dtype=u.dtype)
    return model.forward(u, n_iter=n_iter, output=output, keep_residuals=keep_residuals)


def _cuda():
    """:mod:`crfcore._cuda.crf`, after the check that ``device="cuda"`` can run (before numba.cuda is imported)."""
    from ._cuda import device as cuda_device

    cuda_device.require()
    from ._cuda import crf as cuda_crf

    return cuda_crf


def crf(logits, terms, *, n_iter=DEFAULTS["n_iter"], device="cpu"):
    """Mean-field probabilities ``Q`` ``(N, L)`` of a dense CRF with any pairwise terms (see :func:`crf_fwd`)."""
    return crf_fwd(logits, terms, n_iter=n_iter, output="probs", keep_residuals=False, device=device)[0]


def _is_cuda_residuals(residuals):
    return type(residuals).__name__ == "CudaCrfResiduals" and type(residuals).__module__ == "crfcore._cuda.crf"


def crf_bwd(residuals, grad, *, features=True, device=None):
    """Exact gradient of :func:`crf_fwd`'s output w.r.t. the logits and each term's weight and compatibility (and,
    with ``features``, each term's features: the lattice's features gradient, normalisation included).

    ``features`` defaults to True, as in :func:`crfcore.meanfield_bwd`; False skips the features gradient (about
    as costly as the rest of the backward) and leaves :attr:`TermGrads.features` None.

    ``device`` (None, "cpu" or "cuda") must be left out or name where the forward ran: the backward runs there.
    After a forward on the device, ``logits`` (and each term's ``features`` gradient) come back as device arrays
    where the forward's inputs were; the weight and compatibility gradients are host values.

    Returns
    -------
    CrfGrads
        ``logits`` ``(N, L)`` and ``terms``: a :class:`TermGrads` per term (``weight`` a float or ``(L, L)``,
        ``compat`` ``(L, L)``, ``features`` ``(N, d)`` float64 or None).
    """
    on_cuda = _is_cuda_residuals(residuals)
    if not on_cuda and not isinstance(residuals, CrfResiduals):
        raise TypeError("`residuals` must be the second value returned by crf_fwd(..., keep_residuals=True)")
    if not isinstance(features, (bool, np.bool_)):
        raise TypeError(f"`features` must be True or False, got {features!r}")
    check_backward_device(device, on_cuda)
    if on_cuda:
        du, da, dfs = _cuda().backward(residuals, grad, bool(features))
        return CrfGrads(du, term_grads(residuals.terms, da, dfs, tuple(residuals.q_out.shape)[1]))
    model = residuals.model
    g = as_float_array(grad, "grad", dtype=model.dtype)
    if g.shape != (model.num_points, model.num_labels):
        raise ValueError(f"`grad` must have the output's shape {(model.num_points, model.num_labels)}, got {g.shape}")
    check_finite(g, "grad")
    return _parallel.run(run_backward, residuals, g, bool(features))


def run_backward(res, g, features):
    """:func:`crf_bwd` of checked arguments (``g`` ``(N, L)`` in the compute dtype), in the calling thread."""
    model = res.model
    if res.output == "probs":
        dz = np.empty_like(g)
        MK.softmax_rows_bwd(res.q_out, g, dz, tiny(dz.dtype))
    else:
        dz = g.copy()
    n_iter = res.q_in.shape[0]
    grads = [FeatureGrad(k) for k in model.kernels] if features and n_iter else None
    if n_iter == 0:
        du, da = dz, [np.zeros((model.num_labels,) * 2) for _ in model.kernels]
    else:
        du, da = backward_one(dz, model.kernels, model.transform, res.q_in, res.messages, grads)
    dfs = [None] * len(model.terms)
    if features:
        dfs = [g.result(t.features) for g, t in zip(grads, model.terms)] if grads is not None else \
            [np.zeros_like(t.features) for t in model.terms]
    return CrfGrads(du, term_grads(model.terms, da, dfs, model.num_labels))
