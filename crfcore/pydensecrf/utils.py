"""``from crfcore.pydensecrf.utils import ...``: pydensecrf's helpers for unaries and pairwise features.

Same functions, arguments and float32 results as pydensecrf's ``utils``. Bad arguments raise an error naming them
where pydensecrf asserted (``python -O`` drops asserts), indexed out of range or divided by zero, of a class that
pydensecrf's exception still catches (:mod:`crfcore.pydensecrf.errors`). Widths shorter than the dimensions they
scale are taken as pydensecrf takes them (the dimensions past them stay unscaled), with a warning.
"""

import numbers
import warnings

import numpy as np

from .errors import LabelCountError, LabelRangeError, LabelTypeError, LengthError, RangeError

__all__ = ["unary_from_labels", "unary_from_softmax", "create_pairwise_gaussian", "create_pairwise_bilateral",
           "compute_unary", "softmax_to_unary"]


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """Unary energies ``(n_labels, N)`` float32 from a label map, trusting each label with probability ``gt_prob``.

    Parameters
    ----------
    labels : array_like of int
        The label map, any shape (flattened). With ``zero_unsure`` the value 0 means "unknown" (uniform unary) and
        the labels are ``1 .. n_labels``; without, the labels are ``0 .. n_labels - 1``.
    n_labels : int
        The number of labels (not counting the unknown 0).
    gt_prob : float
        The probability the given label is right, in (0, 1); the others share the rest.
    zero_unsure : bool, default True
    """
    if not 0 < gt_prob < 1:
        raise RangeError(f"`gt_prob` must be in (0, 1), got {gt_prob}")
    if isinstance(n_labels, (numbers.Real, np.generic)) and not isinstance(n_labels, (bool, np.bool_)) \
            and float(n_labels) == int(n_labels):
        n_labels = int(n_labels)  # 2.0 as 2
    if not isinstance(n_labels, int) or n_labels < 1:
        raise ValueError(f"`n_labels` must be an int >= 2, got {n_labels!r}")
    if n_labels == 1:
        raise LabelCountError("`n_labels` must be >= 2: with one label, `gt_prob` leaves no probability to share "
                              "(the label is certain everywhere)")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise LabelTypeError(f"`labels` must be an integer label map, got dtype {labels.dtype}; convert it, e.g. "
                             f"labels.astype(np.int64), after checking its values are whole")
    labels = labels.ravel().astype(np.int64)
    lo, hi = (0, n_labels) if zero_unsure else (0, n_labels - 1)
    if labels.size and (labels.min() < lo or labels.max() > hi):
        raise LabelRangeError(f"`labels` must lie in {lo}..{hi} for n_labels={n_labels} "
                         f"{'with 0 as unknown' if zero_unsure else 'without an unknown value'}, got values from "
                         f"{labels.min()} to {labels.max()}")
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    p_energy = -np.log(gt_prob)
    u = np.full((n_labels, labels.size), n_energy, dtype=np.float32)
    known = labels > 0 if zero_unsure else np.ones(labels.size, bool)
    rows = labels - 1 if zero_unsure else labels
    u[rows[known], np.flatnonzero(known)] = p_energy
    if zero_unsure:
        u[:, ~known] = -np.log(1.0 / n_labels)
    return u


def compute_unary(labels, M, GT_PROB=0.5):  # noqa: N803 (pydensecrf's names)
    """Deprecated: :func:`unary_from_labels`."""
    warnings.warn("compute_unary is deprecated, use unary_from_labels instead", DeprecationWarning, stacklevel=2)
    return unary_from_labels(labels, M, GT_PROB)


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """Unary energies ``(n_classes, N)`` float32 (negative log-probabilities) from softmax outputs.

    Parameters
    ----------
    sm : array_like, shape (n_classes, ...)
        Class probabilities, classes first; the other axes are flattened.
    scale : float in (0, 1], optional
        Trust in the softmax: probabilities are mixed with the uniform ``scale * sm + (1 - scale) / n_classes``.
    clip : float, optional
        Probabilities are clipped to ``[clip, 1]`` before the log (``log 0`` is infinite); None skips it.
    """
    sm = np.asarray(sm)
    if sm.dtype.kind not in "fiu" or sm.dtype == np.bool_:
        raise TypeError(f"`sm` must be an array of probabilities, got dtype {sm.dtype}")
    if sm.ndim < 1 or sm.shape[0] < 2:
        raise ValueError(f"`sm` must have the classes (at least 2) on its first axis, got shape {sm.shape}")
    num_cls = sm.shape[0]
    sm = sm.astype(np.float64)
    if scale is not None:
        if not 0 < scale <= 1:
            raise RangeError(f"`scale` must be in (0, 1], got {scale}")
        sm = scale * sm + (1 - scale) / num_cls
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    with np.errstate(divide="ignore"):
        return -np.log(sm).reshape([num_cls, -1]).astype(np.float32)


def softmax_to_unary(sm, GT_PROB=1):  # noqa: N803
    """Deprecated: :func:`unary_from_softmax`."""
    warnings.warn("softmax_to_unary is deprecated, use unary_from_softmax instead", DeprecationWarning, stacklevel=2)
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)


def _widths(values, n, name):
    """One width per dimension: a number for all ``n``, or a sequence. More than ``n`` is a :class:`LengthError`
    (pydensecrf: an IndexError); fewer are taken as pydensecrf takes them, scaling only the first dimensions, with a
    warning (its results then depend on units: positions or 0-255 values no width divided)."""
    if isinstance(values, (numbers.Number, np.generic)):
        values = [values] * n
    else:
        values = list(values)
    if len(values) > n:
        raise LengthError(f"`{name}` has {len(values)} values but there are {n} dimensions to scale")
    if len(values) < n:
        warnings.warn(f"`{name}` has {len(values)} value(s) for {n} dimensions: as in pydensecrf, only the first "
                      f"{len(values)} are scaled and the others are used unscaled; pass one width per dimension (or "
                      f"a single number for all)", UserWarning, stacklevel=3)
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.generic)) or not v > 0:
            raise ValueError(f"`{name}` must hold positive numbers, got {values}")
    return values


def create_pairwise_gaussian(sdims, shape):
    """Positions divided by ``sdims`` for an array of ``shape`` (any number of dimensions): ``(len(shape), N)``
    float32 features for ``DenseCRF.addPairwiseEnergy`` (2-D: as ``DenseCRF2D.addPairwiseGaussian``)."""
    shape = tuple(int(s) for s in shape)
    sdims = _widths(sdims, len(shape), "sdims")
    mesh = np.array(np.meshgrid(*[range(s) for s in shape], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= s
    if len(sdims) < len(shape):  # pydensecrf's reshape to len(sdims) rows: features no CRF of `shape` takes
        warnings.warn(f"create_pairwise_gaussian: {len(sdims)} width(s) for a {len(shape)}-D shape gives "
                      f"({len(sdims)}, {mesh.size // len(sdims)}) features, as in pydensecrf, which addPairwiseEnergy "
                      f"refuses for {int(np.prod(shape))} points", UserWarning, stacklevel=2)
    return mesh.reshape([len(sdims), -1])


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Positions divided by ``sdims`` and channels divided by ``schan``: ``(len(sdims) + C, N)`` float32 features
    (2-D RGB: as ``DenseCRF2D.addPairwiseBilateral``).

    Parameters
    ----------
    sdims : sequence of float
        Widths per spatial dimension.
    schan : float or sequence of float
        Widths per channel (one number for all).
    img : array_like
        The image; any number of dimensions and channels.
    chdim : int, default -1
        The channel axis, or -1 when ``img`` has no channel axis.
    """
    img = np.asarray(img)
    if img.dtype.kind not in "fiub":
        raise TypeError(f"`img` must be a numeric image, got dtype {img.dtype}")
    if chdim == -1:
        im_feat = img[np.newaxis].astype(np.float32)
    else:
        im_feat = np.moveaxis(img, chdim, 0).astype(np.float32)
    sdims = _widths(sdims, im_feat.ndim - 1, "sdims")
    for i, s in enumerate(_widths(schan, im_feat.shape[0], "schan")):
        im_feat[i] /= s
    mesh = np.array(np.meshgrid(*[range(s) for s in im_feat.shape[1:]], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= s
    feats = np.concatenate([mesh, im_feat])
    return feats.reshape([feats.shape[0], -1])
