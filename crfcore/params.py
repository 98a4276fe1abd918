"""The parameters of a dense CRF, validated in one place (Krähenbühl & Koltun 2011, eq. 3)."""

import numbers
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from ._validation import IterationCountError, check_finite, check_nonempty_shape, positive_scalar

NORMALIZATIONS = ("symmetric", "after", "before", "none")

#: The defaults of :func:`crfcore.meanfield` (densecrf's usual kernels, Krähenbühl & Koltun 2011), the one place they
#: are written: ``meanfield``, ``meanfield_fwd``, each adapter's ``crf_refine``, ``crfcore refine`` and
#: ``crfcore.fit`` take theirs from here. ``compat`` None is Potts ``1 - I``.
DEFAULTS = MappingProxyType(dict(n_iter=5, theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0, w_bilateral=10.0,
                                 w_spatial=3.0, compat=None, normalization="symmetric", spatial_dims=2))


class CrfParams(NamedTuple):
    """Validated parameters of a dense CRF.

    Widths are a float, or a read-only float64 array with one value per dimension: ``theta_alpha`` and
    ``theta_gamma`` per spatial axis (in the array's axis order), ``theta_beta`` per image channel.
    """

    n_iter: int
    theta_alpha: object
    theta_beta: object
    theta_gamma: object
    w_spatial: object  # float or (L, L) float64 array
    w_bilateral: object  # float or (L, L) float64 array
    compat: np.ndarray  # (L, L) float64, the label compatibility mu
    normalization: str
    spatial_dims: int


def kernel_width(x, name, n, what):
    """A kernel width: a positive finite float, or ``n`` of them (one per ``what``) as a read-only float64 array.

    A length-1 sequence stays an array (its gradient comes back in the same form).
    """
    if isinstance(x, (numbers.Real, np.generic)) or (isinstance(x, np.ndarray) and x.ndim == 0):
        return positive_scalar(x, name)
    expected = f"`{name}` must be a positive real number or a sequence of {n} of them (one per {what})"
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{expected}, got a string")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{expected}, got {x!r}") from exc
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{expected}, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(
            f"`{name}` must be a scalar or have one value per {what} ({n}), got shape {arr.shape}"
        )
    arr = np.array(arr, dtype=np.float64)
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        raise ValueError(f"`{name}` must be positive and finite, got {arr.tolist()}")
    arr.flags.writeable = False
    return arr


def weight(w, name, n_labels):
    """A kernel weight (or the compatibility): a finite float, or an ``(L, L)`` float64 array."""
    if isinstance(w, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a real number or an ({n_labels}, {n_labels}) array, got a bool")
    if isinstance(w, numbers.Real) or (isinstance(w, (np.ndarray, np.generic)) and np.ndim(w) == 0):
        arr = np.asarray(w)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"`{name}` must be real, got dtype {arr.dtype}")
        w = float(arr)
        if not np.isfinite(w):
            raise ValueError(f"`{name}` must be finite, got {w}")
        return w
    arr = np.asarray(w)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"`{name}` must be a real number or an ({n_labels}, {n_labels}) array, got {arr.dtype}")
    if arr.shape != (n_labels, n_labels):
        raise ValueError(
            f"`{name}` must be a scalar or have shape ({n_labels}, {n_labels}) for {n_labels} labels, "
            f"got shape {arr.shape}"
        )
    arr = np.array(arr, dtype=np.float64)
    check_finite(arr, name)
    return arr


def compat_matrix(compat, n_labels, name="compat"):
    """A label compatibility as an ``(L, L)`` float64 array; one message for every wrong form."""
    expected = f"None (Potts) or an ({n_labels}, {n_labels}) matrix for {n_labels} labels"
    if isinstance(compat, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be {expected}, got a bool")
    arr = np.asarray(compat)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"`{name}` must be {expected}, got dtype {arr.dtype}")
    if arr.shape != (n_labels, n_labels):
        got = "a scalar" if arr.ndim == 0 else f"shape {arr.shape}"
        raise ValueError(f"`{name}` must be {expected}, got {got}")
    arr = np.array(arr, dtype=np.float64)
    check_finite(arr, name)
    return arr


def check_n_iter(n_iter, name="n_iter"):
    """The number of mean-field iterations: an int >= 0 (TypeError for another type, ValueError below 0).
    ``name``: the argument's name where it is another (crfasrnn's ``num_iterations``)."""
    if isinstance(n_iter, (bool, np.bool_)) or not isinstance(n_iter, (numbers.Integral, np.integer)):
        raise IterationCountError(f"`{name}` must be an int >= 0, got {type(n_iter).__name__}")
    if n_iter < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {n_iter}")
    return int(n_iter)


def check_normalization(normalization, name="normalization"):
    """A kernel normalisation: one of :data:`NORMALIZATIONS`."""
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise ValueError(f"`{name}` must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization


def potts(n_labels):
    """The Potts compatibility ``mu(l, l') = [l != l']`` as an ``(L, L)`` matrix."""
    return 1.0 - np.eye(n_labels)


def check_params(n_labels, *, n_iter, theta_alpha, theta_beta, theta_gamma, w_spatial, w_bilateral, compat,
                 normalization, spatial_dims=2, n_channels=None):
    """Validate the CRF parameters for ``n_labels`` labels (and an image of ``n_channels`` channels, which a
    per-channel ``theta_beta`` must match); return a :class:`CrfParams`."""
    n_iter = check_n_iter(n_iter)
    check_normalization(normalization)
    if compat is None:
        compat = potts(n_labels)
    else:
        compat = compat_matrix(compat, n_labels)
    n_channels = np.size(theta_beta) if n_channels is None else n_channels
    return CrfParams(
        n_iter=n_iter,
        theta_alpha=kernel_width(theta_alpha, "theta_alpha", spatial_dims, "spatial axis"),
        theta_beta=kernel_width(theta_beta, "theta_beta", n_channels, "image channel"),
        theta_gamma=kernel_width(theta_gamma, "theta_gamma", spatial_dims, "spatial axis"),
        w_spatial=weight(w_spatial, "w_spatial", n_labels),
        w_bilateral=weight(w_bilateral, "w_bilateral", n_labels),
        compat=compat,
        normalization=normalization,
        spatial_dims=int(spatial_dims),
    )


# Pairwise terms (crfcore.crf): each one's features, weight, compatibility and normalisation

class PairwiseTerm(NamedTuple):
    """One pairwise term: ``features`` ``(N, d)`` already divided by their widths, ``weight`` (a number or ``(L, L)``),
    ``compat`` (``(L, L)``, or None for Potts ``1 - I``) and its kernel's ``normalization``."""

    features: object
    weight: object = 1.0
    compat: object = None
    normalization: str = "symmetric"


class CheckedTerm(NamedTuple):
    features: np.ndarray
    weight: object  # float or (L, L) float64
    compat: np.ndarray  # (L, L) float64
    normalization: str


def as_term(term, i):
    """``terms[i]`` as a :class:`PairwiseTerm` (a tuple of its fields is accepted)."""
    if isinstance(term, PairwiseTerm):
        return term
    if isinstance(term, (tuple, list)) and 1 <= len(term) <= 4:
        return PairwiseTerm(*term)
    raise TypeError(f"`terms[{i}]` must be a crfcore.PairwiseTerm, got {type(term).__name__}")


def check_features_shape(shape, i, n):
    """A term's features must be ``(N, d)`` with ``d >= 1``."""
    if len(shape) != 2 or shape[0] != n:
        raise ValueError(f"`terms[{i}].features` must have shape ({n}, d) for {n} points, got {tuple(shape)}")
    check_nonempty_shape(tuple(shape), f"terms[{i}].features")


def check_term_params(term, i, n_labels):
    """A term's weight (float or ``(L, L)`` float64) and compatibility (``(L, L)`` float64); its normalisation
    checked."""
    w = weight(term.weight, f"terms[{i}].weight", n_labels)
    compat = potts(n_labels) if term.compat is None else compat_matrix(term.compat, n_labels, f"terms[{i}].compat")
    check_normalization(term.normalization, f"terms[{i}].normalization")
    return w, compat


def check_terms_list(terms):
    """``terms`` as a non-empty list (a clear error for a single term, a string, an array or an empty list)."""
    if isinstance(terms, PairwiseTerm):
        raise TypeError("`terms` must be a list of PairwiseTerm, got a single PairwiseTerm: pass [term]")
    if isinstance(terms, (str, bytes, np.ndarray)) or not hasattr(terms, "__iter__"):
        raise TypeError(f"`terms` must be a list of PairwiseTerm, got {type(terms).__name__}")
    terms = list(terms)
    if not terms:
        raise ValueError("`terms` is empty: a dense CRF needs at least one pairwise term")
    return terms


def matrix(term):
    """A term's label transform ``A = mu W`` (float64)."""
    return term.compat * term.weight if np.ndim(term.weight) == 0 else term.compat @ term.weight


def summable(terms):
    """Whether the terms' messages can be summed into one array: scalar weights and one common compatibility."""
    return all(np.ndim(t.weight) == 0 and np.array_equal(t.compat, terms[0].compat) for t in terms)
