"""``import crfcore.pydensecrf.densecrf as dcrf``: pydensecrf's ``densecrf`` module on crfcore's engine.

The same classes, methods, arguments and numbers as pydensecrf (Krähenbühl's densecrf behind lucasb-eyer's Cython
wrapper): ``DenseCRF(nvar, nlabels)``, ``DenseCRF2D(W, H, nlabels)`` (width first), ``setUnaryEnergy(U)`` with
``U`` ``(L, N)`` negative log-probabilities, ``addPairwiseEnergy(features (d, N), compat, kernel, normalization)``,
``addPairwiseGaussian``, ``addPairwiseBilateral``, ``inference(n)`` returning ``Q`` ``(L, N)`` float32, and
step-by-step ``startInference`` / ``stepInference`` / ``klDivergence``. Computations are in float32 with the
features rounded to float32, as densecrf does.

What differs (docs, "Coming from pydensecrf"): any float dtype and memory layout is accepted (pydensecrf wants
C-contiguous float32 and says "Buffer dtype mismatch" otherwise); ``+inf`` energies mark an impossible label, as in
pydensecrf; wrong shapes, NaN or ``-inf`` energies, a point with every label impossible, a compatibility of the
wrong size and an image that is not ``H x W x 3`` uint8 raise an error naming the argument (pydensecrf returns NaN
or reads out of bounds), of a class that pydensecrf's own exception for it still catches
(:mod:`crfcore.pydensecrf.errors`); ``LogisticUnary`` and learning are not provided (:func:`crfcore.fit` learns a
CRF's parameters).
"""

import enum
import numbers
import warnings

import numpy as np

from .._kernels import meanfield as MK
from .._kernels import stepwise as SK
from .._runtime import parallel as _parallel
from .._engine.iterations import filter_all, softmax, tiny
from .._validation import check_finite, check_logits_values
from ..terms import CrfModel, PairwiseTerm
from .errors import ArgumentTypeError, LengthError

__all__ = ["DenseCRF", "DenseCRF2D", "Unary", "ConstUnary", "LogisticUnary", "KernelType", "NormalizationType",
           "CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL", "NO_NORMALIZATION", "NORMALIZE_BEFORE", "NORMALIZE_AFTER",
           "NORMALIZE_SYMMETRIC"]


class KernelType(enum.IntEnum):
    """densecrf's kernel types. They choose which kernel parameters densecrf's learning would adapt; inference
    uses the features as given with all three, as densecrf does."""

    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    """densecrf's kernel normalisations (crfcore's ``"none"``, ``"before"``, ``"after"``, ``"symmetric"``)."""

    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = KernelType
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = NormalizationType
_NORMALIZATIONS = {NO_NORMALIZATION: "none", NORMALIZE_BEFORE: "before", NORMALIZE_AFTER: "after",
                   NORMALIZE_SYMMETRIC: "symmetric"}


def _float_matrix(x, name, shape, what, energies=False):
    """``x`` as a float32 array of ``shape`` (any real dtype, any layout), finite, or a clear error. ``energies``:
    ``x`` is a unary energy ``(L, N)``, where ``+inf`` marks an impossible label (probability 0, as in densecrf)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ArgumentTypeError(f"`{name}` must be a real numeric array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"Bad shape for {what}: `{name}` must have shape {shape}, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if energies:
        check_logits_values(arr, name, labels_axis=0, sign=-1.0)
    else:
        check_finite(arr, name, " (in float32)")
    return arr


def _count(value, name, least=1):
    """An int argument as pydensecrf's Cython takes it: ints, NumPy integers and integral floats (``60.0``); a
    fractional float, a bool or another type is an :class:`ArgumentTypeError`; below ``least`` a ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.generic)):
        raise ArgumentTypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if not isinstance(value, (numbers.Integral, np.integer)):
        if not np.isfinite(value) or float(value) != int(value):
            raise ArgumentTypeError(f"`{name}` must be a whole number, got {value!r}")
    value = int(value)
    if value < least:
        raise ValueError(f"`{name}` must be >= {least}, got {value}")
    return value


def _enum(value, kind, name):
    try:
        return kind(value)
    except (ValueError, TypeError):
        raise ValueError(f"`{name}` must be one of {[m.name for m in kind]}, got {value!r}") from None


class Unary:
    """Base of the unary classes (pydensecrf's ``Unary``)."""

    def energy(self, n_labels, n_points):
        raise NotImplementedError


class ConstUnary(Unary):
    """A fixed unary energy ``U`` ``(L, N)`` (negative log-probabilities), for ``DenseCRF.setUnary``."""

    def __init__(self, u):
        arr = np.asarray(u)
        if arr.ndim != 2:
            raise ValueError(f"`u` must be a 2-D (nlabels, nvar) array, got shape {arr.shape}")
        self.u = _float_matrix(arr, "u", arr.shape, "unary energy", energies=True)

    def energy(self, n_labels, n_points):
        if self.u.shape != (n_labels, n_points):
            raise ValueError(f"Bad shape for unary energy: need {(n_labels, n_points)}, got {self.u.shape}")
        return self.u


class LogisticUnary(Unary):
    """densecrf's learnable logistic unary: not provided (crfcore.fit learns a CRF's parameters)."""

    def __init__(self, L, f):
        raise NotImplementedError("LogisticUnary (densecrf's learning code) is not provided by crfcore.pydensecrf; "
                                  "set a fixed unary with setUnaryEnergy(U), and see crfcore.fit to learn CRF "
                                  "parameters")


class _Pairwise:
    """One pairwise term as densecrf holds it: features ``(N, d)`` (float32 values), a compatibility, a kernel type
    and a normalisation."""

    def __init__(self, features, compat, n_labels, kernel, normalization):
        self.features = features
        self.kernel = _enum(kernel, KernelType, "kernel")
        self.normalization = _enum(normalization, NormalizationType, "normalization")
        self.kind, self.matrix = _compatibility(compat, n_labels)

    def term(self):
        """The term for crfcore's engine. densecrf's Potts(w) subtracts ``-w K Q``; crfcore's Potts weight ``w`` with
        ``1 - I`` differs from it by the same amount for every label of a pixel, so the probabilities agree."""
        norm = _NORMALIZATIONS[self.normalization]
        if self.kind == "potts":
            return PairwiseTerm(self.features, self.matrix, None, norm)
        return PairwiseTerm(self.features, 1.0, self.matrix, norm)

    def energy_matrix(self, n_labels):
        """densecrf's own label transform: its ``apply`` gives ``(K Q) M^T`` with this ``M``."""
        return -self.matrix * np.eye(n_labels) if self.kind == "potts" else self.matrix


def _compatibility(compat, n_labels):
    """pydensecrf's ``_labelcomp``: a number is Potts, a vector diagonal, a matrix a (symmetrised) matrix."""
    if isinstance(compat, (bool, np.bool_)):
        raise TypeError("`compat` must be a number, an (nlabels,) vector or an (nlabels, nlabels) matrix, got a bool")
    if isinstance(compat, numbers.Number) or (isinstance(compat, np.ndarray) and compat.ndim == 0):
        w = float(np.asarray(compat, dtype=np.float32))
        if not np.isfinite(w):
            raise ValueError(f"`compat` must be finite, got {compat}")
        return "potts", w
    arr = np.asarray(compat)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"`compat` must be a number, a vector or a matrix of numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32).astype(np.float64)
    check_finite(arr, "compat")
    if arr.ndim == 1:
        if arr.shape != (n_labels,):
            raise ValueError(f"`compat` as a vector (DiagonalCompatibility) needs {n_labels} values, one per label, "
                             f"got {arr.shape[0]}")
        return "diagonal", np.diag(arr)
    if arr.ndim == 2:
        if arr.shape != (n_labels, n_labels):
            raise ValueError(f"`compat` as a matrix (MatrixCompatibility) must be ({n_labels}, {n_labels}), got "
                             f"{arr.shape}")
        return "matrix", (0.5 * (arr + arr.T)).astype(np.float32).astype(np.float64)  # densecrf symmetrises
    raise ValueError("LabelCompatibility of dimension >2 not meaningful: `compat` must be a number, a vector or a "
                     f"matrix, got shape {arr.shape}")


class DenseCRF:
    """A fully connected CRF over ``nvar`` points with ``nlabels`` labels (pydensecrf's ``DenseCRF``).

    Parameters
    ----------
    nvar : int
        Number of points (pixels, voxels, ...).
    nlabels : int
        Number of labels, at least 2.
    """

    def __init__(self, nvar, nlabels):
        self._nvar, self._nlabel = _count(nvar, "nvar"), _count(nlabels, "nlabels")
        self._unary = None
        self._logits = None  # -U^T (N, L), the engine's layout, made once per unary
        self._pairwise = []
        self._model = None
        self._buffers = None  # stepInference's scratch, kept from step to step

    # --- setup ---------------------------------------------------------------------------------------------------

    def setUnaryEnergy(self, u, f=None):  # noqa: N802 (pydensecrf's name)
        """Set the unary energy ``U`` ``(nlabels, nvar)``: negative log-probabilities (any float dtype)."""
        if f is not None:
            raise NotImplementedError("setUnaryEnergy(L, f) is densecrf's learnable logistic unary, not provided by "
                                      "crfcore.pydensecrf; pass the fixed energy alone")
        self._unary = _float_matrix(u, "u", (self._nlabel, self._nvar), "unary energy", energies=True)
        self._logits = None

    def setUnary(self, u):  # noqa: N802
        """Set the unary from a :class:`ConstUnary`."""
        if not isinstance(u, Unary):
            raise TypeError(f"setUnary takes a ConstUnary, got {type(u).__name__}; or call setUnaryEnergy(U)")
        self._unary = u.energy(self._nlabel, self._nvar)
        self._logits = None

    def addPairwiseEnergy(self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):  # noqa
        """Add a pairwise term with a Gaussian kernel on ``features`` ``(d, nvar)`` (already divided by the widths).

        ``compat``: a number (Potts), an ``(nlabels,)`` vector (diagonal) or an ``(nlabels, nlabels)`` matrix. Any
        number of terms may be added; each has its own normalisation.
        """
        arr = np.asarray(features)
        if arr.ndim != 2 or arr.shape[1] != self._nvar:
            raise ValueError(f"Bad shape for pairwise energy: `features` must be (d, {self._nvar}), got {arr.shape}")
        f = _float_matrix(arr, "features", arr.shape, "pairwise energy")
        self._add(np.ascontiguousarray(f.T, dtype=np.float64), compat, kernel, normalization)

    def _add(self, features, compat, kernel, normalization):
        self._pairwise.append(_Pairwise(features, compat, self._nlabel, kernel, normalization))
        self._model = None
        self._buffers = None

    # --- inference -----------------------------------------------------------------------------------------------

    def _energy(self):
        if self._unary is None:
            warnings.warn("no unary energy was set: inference starts from uniform probabilities (as densecrf)",
                          RuntimeWarning, stacklevel=3)
            return np.zeros((self._nlabel, self._nvar), np.float32)
        return self._unary

    def _engine_logits(self):
        """``-U^T`` ``(N, L)`` float32, the engine's logits (made once per unary)."""
        if self._logits is None or self._unary is None:
            self._logits = self._transposed(self._energy(), -1.0)
        return self._logits

    def _crf(self):
        if self._nlabel == 1:  # one label: its probability is 1 whatever the terms (as densecrf)
            return None
        if self._model is None and self._pairwise:
            self._model = CrfModel([p.term() for p in self._pairwise], self._nvar, self._nlabel, np.float32)
        return self._model

    def _transposed(self, x, scale=1.0, out=None):
        """``scale * x.T`` as a C-contiguous float32 array (a blocked, parallel transpose), into ``out`` if given."""
        out = np.empty(x.shape[::-1], np.float32) if out is None else out
        _parallel.run(MK.transpose_scaled, np.ascontiguousarray(x, dtype=np.float32), np.float32(scale), out)
        return out

    def inference(self, niter=None, n_iterations=None):
        """``niter`` mean-field iterations; returns ``Q`` ``(nlabels, nvar)`` float32 (``np.argmax(Q, axis=0)`` is the
        labelling). ``n_iterations`` is accepted as another name (pydensecrf's README uses it)."""
        if niter is None:
            niter = n_iterations
        niter = _count(niter, "niter", least=0)
        return _parallel.run(self._inference, niter)  # one hand-off to the compute thread for the whole call

    def _inference(self, niter):
        model = self._crf()
        if model is None:  # no pairwise term (or one label): every iteration gives softmax(-U) again
            return self._start_inference()[0]
        q, _ = model.forward(self._engine_logits(), n_iter=niter, output="probs", keep_residuals=False)
        return self._transposed(q)

    def startInference(self):  # noqa: N802
        """``(Q, tmp1, tmp2)``: ``Q = softmax(-U)`` ``(nlabels, nvar)`` float32 and two scratch arrays of its shape
        for :meth:`stepInference`."""
        return _parallel.run(self._start_inference)

    def _start_inference(self):
        logits = self._engine_logits()
        if self._nlabel == 1:
            q = np.ones((1, self._nvar), np.float32)
        else:
            q = np.empty_like(logits)
            _parallel.run(softmax, logits, q)
            q = self._transposed(q)
        return q, np.zeros_like(q), np.zeros_like(q)

    def _check_q(self, q, name="Q"):
        if not isinstance(q, np.ndarray) or q.shape != (self._nlabel, self._nvar):
            raise ValueError(f"`{name}` must be the ({self._nlabel}, {self._nvar}) array from startInference, got "
                             f"{getattr(q, 'shape', type(q).__name__)}")

    def _term_energy(self, msg, k):
        """densecrf's ``pairwise_k->apply(Q)`` from the engine's message ``K_k Q`` ``(N, L)``, still ``(N, L)``, as
        ``(array, scale)``."""
        p = self._pairwise[k]
        if p.kind == "potts":
            return msg, -p.matrix  # -w K Q, the scale applied to the dot product
        return (msg.astype(np.float64) @ p.energy_matrix(self._nlabel).T).astype(np.float32), 1.0

    def stepInference(self, Q, tmp1, tmp2):  # noqa: N802,N803
        """One mean-field step, in place: ``Q`` (from :meth:`startInference`) becomes the next iterate; ``tmp1``
        receives the energies before normalisation and ``tmp2`` the last term's pairwise energy, as in densecrf,
        when they are writable arrays of ``Q``'s shape (pydensecrf's Python sees them empty).

        The whole step runs on crfcore's compute thread in one hand-off: a loop of small steps paid a thread wake-up
        per transpose and kernel (7 a step), which cost more than the step itself on a machine whose cores were
        busy (224x224 L=2: 18.6 ms a step against pydensecrf2's 9.1 ms with a busy process per core)."""
        _parallel.run(self._step_inference, Q, tmp1, tmp2)

    def _step_inference(self, Q, tmp1, tmp2):  # noqa: N803
        self._check_q(Q)
        if not Q.flags.writeable or Q.dtype != np.float32:
            raise ValueError("`Q` must be the writable float32 array from startInference (it is updated in place)")
        wanted = [t if isinstance(t, np.ndarray) and t.shape == Q.shape and t.flags.writeable else None
                  for t in (tmp1, tmp2)]
        model = self._crf()
        if model is None:  # no pairwise term, or one label
            if wanted[0] is not None:
                wanted[0][...] = -self._energy()
            Q[...] = self._start_inference()[0]
            return
        q, msgs, mats, diagonal = self._step_buffers()
        filter_all(self._transposed(Q, out=q), model.kernels, list(msgs))
        outs = [np.empty((0, 0), np.float32) if t is None  # without rows: not stored
                else t if t.flags.c_contiguous and t.dtype == np.float32 else np.empty(t.shape, np.float32)
                for t in (Q, *wanted)]
        SK.step_finish(self._energy(), msgs, mats, diagonal, *outs, tiny(np.float32))
        for given, out in zip((Q, *wanted), outs):
            if given is not None and out is not given:  # a caller's array of another layout or dtype
                given[...] = out

    def _step_buffers(self):
        """``(q, msgs, mats, diagonal)``: ``Q`` in the engine's ``(N, L)`` layout, one message per term ``(K, N,
        L)``, and the terms' label transforms as densecrf applies them (``(K, L, L)`` float32, and which are
        diagonal). Made once and kept from step to step: fresh arrays cost their page faults every step (22 MB
        each at 512x512 with 21 labels)."""
        if self._buffers is None:
            n, n_lab = self._nvar, self._nlabel
            mats = np.stack([p.energy_matrix(n_lab) for p in self._pairwise]).astype(np.float32)
            self._buffers = (np.empty((n, n_lab), np.float32), np.empty((len(mats), n, n_lab), np.float32), mats,
                             np.array([p.kind != "matrix" for p in self._pairwise]))
        return self._buffers

    def klDivergence(self, Q):  # noqa: N802,N803
        """densecrf's ``klDivergence(Q)``: ``sum Q log Q + sum U Q + sum_k sum Q * pairwise_k(Q)`` (a label with
        ``Q = 0`` adds 0, also where its energy is ``+inf``; densecrf gives NaN there)."""
        return _parallel.run(self._kl_divergence, Q)

    def _kl_divergence(self, Q):  # noqa: N803
        self._check_q(Q)
        q_ln = np.ascontiguousarray(Q, dtype=np.float32)
        kl = _parallel.run(SK.entropy_unary, q_ln, self._energy())
        if self._nlabel == 1 and self._pairwise:
            raise ValueError("klDivergence with one label and pairwise terms is not provided (nlabels must be >= 2)")
        model = self._crf()
        if model is None:
            return float(kl)
        q, msgs, _, _ = self._step_buffers()
        filter_all(self._transposed(q_ln, out=q), model.kernels, list(msgs))
        for k, m in enumerate(msgs):
            energy, scale = self._term_energy(m, k)
            kl += scale * _parallel.run(SK.dot64, q, energy)
        return float(kl)


class DenseCRF2D(DenseCRF):
    """A dense CRF over a ``W x H`` image (pydensecrf's ``DenseCRF2D``; width first, pixels in row-major order).

    Parameters
    ----------
    w, h : int
        Image width and height.
    nlabels : int
    """

    def __init__(self, w, h, nlabels):
        w, h = _count(w, "w"), _count(h, "h")
        super().__init__(w * h, nlabels)
        self._w, self._h = w, h

    def _features(self, sxy, extra=0):
        """An ``(N, 2 + extra)`` float64 array whose first columns are ``(x / sx, y / sy)`` per pixel, divided in
        float32 as densecrf does (row-major pixels, x first)."""
        sx, sy = _pair(sxy, "sxy")
        out = np.empty((self._h, self._w, 2 + extra))
        out[..., 0] = (np.arange(self._w, dtype=np.float32) / np.float32(sx))[None, :]
        out[..., 1] = (np.arange(self._h, dtype=np.float32) / np.float32(sy))[:, None]
        return out.reshape(-1, 2 + extra)

    def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):  # noqa
        """The smoothness term: a Gaussian of the pixel positions with widths ``sxy`` (a number or ``(sx, sy)``)."""
        self._add(self._features(sxy), compat, kernel, normalization)

    def addPairwiseBilateral(self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL,  # noqa: N802
                             normalization=NORMALIZE_SYMMETRIC):
        """The appearance term: a Gaussian of positions (widths ``sxy``) and colours (widths ``srgb``, a number or
        one per channel) of ``rgbim``, an ``(H, W, 3)`` uint8 image."""
        im = np.asarray(rgbim)
        if im.dtype != np.uint8:
            raise ArgumentTypeError(f"`rgbim` must be a uint8 image (0-255), got dtype {im.dtype}; convert it, e.g. "
                            f"(img * 255).round().astype(np.uint8), or build float features with "
                            f"utils.create_pairwise_bilateral and addPairwiseEnergy")
        if im.ndim != 3 or im.shape[:2] != (self._h, self._w):
            raise ValueError(f"Bad shape for pairwise bilateral: `rgbim` must be ({self._h}, {self._w}, 3), got "
                             f"{im.shape}")
        if im.shape[2] != 3:
            raise ValueError("addPairwiseBilateral only works for RGB images (H, W, 3); for other channels use "
                             "`utils.create_pairwise_bilateral` with addPairwiseEnergy")
        widths = _widths(srgb, "srgb", 3, "(sr, sg, sb)")
        widths = np.asarray([_positive(s, "srgb") for s in widths], dtype=np.float32)
        feats = self._features(sxy, extra=3)
        feats[:, 2:] = im.reshape(-1, 3) / widths  # uint8 / float32: divided in float32
        self._add(feats, compat, kernel, normalization)


def _positive(x, name):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Real, np.generic)):
        raise ArgumentTypeError(f"`{name}` must be positive numbers, got {x!r}")
    x = float(x)
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"`{name}` must be positive and finite, got {x}")
    return x


def _widths(values, name, n, form):
    """A number for all ``n`` dimensions, or the first ``n`` of a sequence (pydensecrf reads ``values[0 .. n-1]`` and
    ignores the rest); fewer is a :class:`~crfcore.pydensecrf.errors.LengthError`."""
    if isinstance(values, (numbers.Number, np.generic)):
        return (values,) * n
    try:
        values = tuple(values)
    except TypeError:
        raise ArgumentTypeError(f"`{name}` must be a number or {form}, got {values!r}") from None
    if len(values) < n:
        raise LengthError(f"`{name}` must be a number or {form}, got {len(values)} value(s): {values!r}")
    return values[:n]


def _pair(sxy, name):
    return tuple(_positive(v, name) for v in _widths(sxy, name, 2, "(sx, sy)"))
