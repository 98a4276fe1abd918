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

from ._engine import parallel as _parallel
from ._engine.validation import as_float_array, check_finite, check_nonempty
from ._engine.iterations import Transform, backward_one, forward_one
from ._engine.kernel import FeatureGrad, Kernel
from .params import NORMALIZATIONS, compat_matrix, potts, weight

OUTPUTS = ("probs", "logits")


class PairwiseTerm(NamedTuple):
    """One pairwise term: ``features`` ``(N, d)`` already divided by their widths, ``weight`` (a number or ``(L, L)``),
    ``compat`` (``(L, L)``, or None for Potts ``1 - I``) and its kernel's ``normalization``."""

    features: object
    weight: object = 1.0
    compat: object = None
    normalization: str = "symmetric"


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


class _Term(NamedTuple):
    features: np.ndarray
    weight: object  # float or (L, L) float64
    compat: np.ndarray  # (L, L) float64
    normalization: str


def _check_term(term, i, n, n_labels):
    if not isinstance(term, PairwiseTerm):
        if isinstance(term, (tuple, list)) and 1 <= len(term) <= 4:
            term = PairwiseTerm(*term)
        else:
            raise TypeError(f"`terms[{i}]` must be a crfcore.PairwiseTerm, got {type(term).__name__}")
    f = as_float_array(term.features, f"terms[{i}].features", dtype=np.float64)
    if f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"`terms[{i}].features` must have shape ({n}, d) for {n} points, got {f.shape}")
    check_nonempty(f, f"terms[{i}].features")
    check_finite(f, f"terms[{i}].features")
    w = weight(term.weight, f"terms[{i}].weight", n_labels)
    compat = potts(n_labels) if term.compat is None else compat_matrix(term.compat, n_labels, f"terms[{i}].compat")
    if term.normalization not in NORMALIZATIONS:
        raise ValueError(f"`terms[{i}].normalization` must be one of {NORMALIZATIONS}, got {term.normalization!r}")
    return _Term(f, w, compat, term.normalization)


def _check_logits(logits):
    u = as_float_array(logits, "logits")
    if u.ndim != 2:
        raise ValueError(f"`logits` must have shape (N, L), got {u.shape}")
    check_nonempty(u, "logits")
    if u.shape[1] < 2:
        raise ValueError(f"`logits` has {u.shape[1]} label(s); a CRF needs L >= 2")
    check_finite(u, "logits")
    return u


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
        if isinstance(terms, PairwiseTerm):
            raise TypeError("`terms` must be a list of PairwiseTerm, got a single PairwiseTerm: pass [term]")
        if isinstance(terms, (str, bytes, np.ndarray)) or not hasattr(terms, "__iter__"):
            raise TypeError(f"`terms` must be a list of PairwiseTerm, got {type(terms).__name__}")
        terms = list(terms)
        if not terms:
            raise ValueError("`terms` is empty: a dense CRF needs at least one pairwise term")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"`dtype` must be float32 or float64, got {self.dtype}")
        self.terms = [_check_term(t, i, n_points, n_labels) for i, t in enumerate(terms)]
        self.num_points, self.num_labels = int(n_points), int(n_labels)
        self.kernels = _parallel.run(self._build)
        mats = [t.compat * t.weight if np.ndim(t.weight) == 0 else t.compat @ t.weight for t in self.terms]
        self.transform = Transform.of(mats, self.dtype)
        # one common compatibility and scalar weights: the messages can be summed into one array
        common = all(np.ndim(t.weight) == 0 and np.array_equal(t.compat, self.terms[0].compat) for t in self.terms)
        self._fused = (Transform.of((self.terms[0].compat,), self.dtype), [t.weight for t in self.terms]) \
            if common else None

    def _build(self):
        return [Kernel(t.features, t.normalization, self.dtype) for t in self.terms]

    def _logits(self, logits):
        u = _check_logits(logits)
        if u.shape != (self.num_points, self.num_labels):
            raise ValueError(f"`logits` must have shape ({self.num_points}, {self.num_labels}) to match the terms, "
                             f"got {u.shape}")
        return np.ascontiguousarray(u, dtype=self.dtype)

    def forward(self, logits, n_iter=5, output="probs", keep_residuals=False):
        """Mean field from ``softmax(logits)``: ``(out, residuals)``, ``out`` ``Q_T`` or ``Z_T`` (``output``)."""
        if output not in OUTPUTS:
            raise ValueError(f"`output` must be one of {OUTPUTS}, got {output!r}")
        if isinstance(n_iter, (bool, np.bool_)) or not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
            raise ValueError(f"`n_iter` must be an int >= 0, got {n_iter!r}")
        u = self._logits(logits)
        n_iter = int(n_iter)
        trace = None
        if keep_residuals:
            shape = (n_iter, self.num_points, self.num_labels)
            trace = (np.empty(shape, self.dtype), tuple(np.empty(shape, self.dtype) for _ in self.kernels))
        tr, weights = (self.transform, None) if keep_residuals or self._fused is None else self._fused
        z, q = _parallel.run(forward_one, u, self.kernels, tr, n_iter, trace, None, output == "logits", weights)
        out = z if output == "logits" else q
        if out is u:
            out = u.copy()
        if not keep_residuals:
            return out, None
        return out, CrfResiduals(self, output, trace[0], trace[1], q)

    def messages(self, q):
        """``[K_k Q]`` for a given ``Q`` ``(N, L)`` (one mean-field step's messages, e.g. for densecrf's
        ``stepInference`` and ``klDivergence``)."""
        q = np.ascontiguousarray(self._logits(q))

        def run():
            from ._engine.kernel import share_workspace

            share_workspace(self.kernels, self.num_labels, self.dtype)
            out = []
            for kern in self.kernels:
                out.append(kern.apply(q, np.empty_like(q)))
            return out

        return _parallel.run(run)

    def matrices(self):
        """The label transforms ``A_k = mu_k W_k`` (float64), as in ``Z = logits - sum_k (K_k Q) A_k^T``."""
        return [t.compat * t.weight if np.ndim(t.weight) == 0 else t.compat @ t.weight for t in self.terms]


def crf_fwd(logits, terms, *, n_iter=5, output="probs", keep_residuals=True):
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

    Returns
    -------
    out : ndarray (N, L)
    residuals : CrfResiduals or None
    """
    u = _check_logits(logits)
    model = CrfModel(terms, u.shape[0], u.shape[1], dtype=u.dtype)
    return model.forward(u, n_iter=n_iter, output=output, keep_residuals=keep_residuals)


def crf(logits, terms, *, n_iter=5):
    """Mean-field probabilities ``Q`` ``(N, L)`` of a dense CRF with any pairwise terms (see :func:`crf_fwd`)."""
    return crf_fwd(logits, terms, n_iter=n_iter, output="probs", keep_residuals=False)[0]


def crf_bwd(residuals, grad, *, features=True):
    """Exact gradient of :func:`crf_fwd`'s output w.r.t. the logits and each term's weight and compatibility (and,
    with ``features``, each term's features: the lattice's features gradient, normalisation included).

    ``features`` defaults to True, as in :func:`crfcore.meanfield_bwd`; False skips the features gradient (about
    as costly as the rest of the backward) and leaves :attr:`TermGrads.features` None.

    Returns
    -------
    CrfGrads
        ``logits`` ``(N, L)`` and ``terms``: a :class:`TermGrads` per term (``weight`` a float or ``(L, L)``,
        ``compat`` ``(L, L)``, ``features`` ``(N, d)`` float64 or None).
    """
    if not isinstance(residuals, CrfResiduals):
        raise TypeError("`residuals` must be the second value returned by crf_fwd(..., keep_residuals=True)")
    model = residuals.model
    g = as_float_array(grad, "grad", dtype=model.dtype)
    if g.shape != (model.num_points, model.num_labels):
        raise ValueError(f"`grad` must have the output's shape {(model.num_points, model.num_labels)}, got {g.shape}")
    check_finite(g, "grad")
    return _parallel.run(_crf_bwd, residuals, g, bool(features))


def _crf_bwd(res, g, features):
    from ._kernels import meanfield as MK
    from ._engine.iterations import tiny

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
    out = []
    for k, (t, dak) in enumerate(zip(model.terms, da)):
        w = t.weight if np.ndim(t.weight) else t.weight * np.eye(model.num_labels)
        d_compat = dak @ w.T  # A = mu W
        d_w = t.compat.T @ dak
        d_w = float(np.trace(d_w)) if np.ndim(t.weight) == 0 else d_w
        df = None
        if features:
            df = grads[k].result(t.features) if grads is not None else np.zeros_like(t.features)
        out.append(TermGrads(d_w, d_compat, df))
    return CrfGrads(du, out)
