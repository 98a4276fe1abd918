"""Mean-field inference in a fully connected CRF with Gaussian edge potentials, forward and backward.

Model (Krähenbühl & Koltun 2011, eq. 1-3): unaries ``-logits``; pairwise ``mu(l, l') * k(f_i, f_j)`` with
``k = W_spatial * k_spatial + W_bilateral * k_bilateral``. One mean-field step (their eq. 4, written as
CRF-as-RNN, Zheng et al. 2015)::

    Q_0 = softmax(U)
    S_t = K_spatial Q_{t-1},  B_t = K_bilateral Q_{t-1}          (message passing, normalised filters)
    Z_t = U - (S_t W_spatial^T + B_t W_bilateral^T) mu^T         (weighting + compatibility transform)
    Q_t = softmax(Z_t)

``meanfield_fwd`` returns ``Q_T`` (or the refined logits ``Z_T``) and the residuals; ``meanfield_bwd`` runs the
iterations in reverse (densecrf's ``DenseCRF::gradient``) for the exact gradient of the unrolled loop.
"""

import numbers
from typing import NamedTuple

import numpy as np

from . import _meanfield_kernels as MK
from . import _parallel
from ._validation import as_float_array, check_finite, check_nonempty, positive_scalar
from .features import bilateral_features, spatial_features
from .lattice import Lattice

NORMALIZATIONS = ("symmetric", "after", "before", "none")
OUTPUTS = ("probs", "logits")


class CrfParams(NamedTuple):
    """Validated parameters of a dense CRF."""

    n_iter: int
    theta_alpha: float
    theta_beta: float
    theta_gamma: float
    w_spatial: object  # float or (L, L) float64 array
    w_bilateral: object  # float or (L, L) float64 array
    compat: np.ndarray  # (L, L) float64, the label compatibility mu
    normalization: str
    spatial_dims: int


class Kernel:
    """A Gaussian kernel on a lattice with its normalisation: ``apply(x) = diag(post) K diag(pre) x``.

    ``normalization`` follows densecrf: ``"symmetric"`` is ``D^-1/2 K D^-1/2``, ``"after"`` is ``D^-1 K``
    (crfasrnn's), ``"before"`` is ``K D^-1`` and ``"none"`` is ``K``, where ``D = diag(K 1)``.
    """

    def __init__(self, features, normalization, dtype):
        self.lattice = Lattice(features)
        n = self.lattice.num_points
        # in the compute dtype, as densecrf
        norm = self.lattice.apply(np.ones((n, 1), dtype), np.empty((n, 1), dtype))[:, 0]
        self.pre = self.post = None
        if normalization == "symmetric":
            self.pre = self.post = (1.0 / np.sqrt(norm + 1e-20)).astype(dtype)
        elif normalization == "after":
            self.post = (1.0 / (norm + 1e-20)).astype(dtype)
        elif normalization == "before":
            self.pre = (1.0 / (norm + 1e-20)).astype(dtype)

        self._work = None

    def apply(self, x, out, transpose=False, scale=1.0, accumulate=False):
        if self._work is None or self._work[0].shape[1] != x.shape[1] or self._work[0].dtype != x.dtype:
            self._work = self.lattice.workspace(x.shape[1], x.dtype)
        pre, post = (self.post, self.pre) if transpose else (self.pre, self.post)
        return self.lattice.apply(x, out, transpose=transpose, pre=pre, post=post, work=self._work, scale=scale,
                                  accumulate=accumulate)


def share_workspace(kernels, n_channels, dtype):
    """Give the kernels one set of scratch buffers for ``n_channels`` channels (they filter one after the
    other), sized for the largest lattice: a workspace per kernel would cost ~20 % more memory at 21 labels."""
    rows = max(k.lattice.arrays.remap.shape[0] for k in kernels)
    verts = max(k.lattice.num_vertices for k in kernels) + 1
    flat = [np.empty(rows * n_channels, dtype), np.empty(verts * n_channels, dtype),
            np.empty(verts * n_channels, dtype)]
    for k in kernels:
        r, m = k.lattice.arrays.remap.shape[0], k.lattice.num_vertices + 1
        k._work = tuple(f[:size * n_channels].reshape(size, n_channels) for f, size in zip(flat, (r, m, m)))


class MeanfieldResiduals(NamedTuple):
    """What the backward needs: the kernels of each image and the iterates of the forward."""

    params: CrfParams
    output: str
    shape: tuple  # the logits' shape
    dtype: np.dtype
    kernels: list  # per image: (spatial Kernel, bilateral Kernel)
    q_in: np.ndarray  # (B, T, N, L): Q_{t-1}, the input of each iteration
    s: np.ndarray  # (B, T, N, L): K_spatial Q_{t-1}
    b: np.ndarray  # (B, T, N, L): K_bilateral Q_{t-1}
    q_out: np.ndarray  # (B, N, L): Q_T


class MeanfieldGrads(NamedTuple):
    """Gradients of a scalar loss w.r.t. the mean-field inputs (the image gets none)."""

    logits: np.ndarray
    compat: np.ndarray  # (L, L)
    w_spatial: object  # float or (L, L), as the weight was given
    w_bilateral: object


def _weight(w, name, n_labels):
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


def potts(n_labels):
    """The Potts compatibility ``mu(l, l') = [l != l']`` as an ``(L, L)`` matrix."""
    return 1.0 - np.eye(n_labels)


def check_params(n_labels, *, n_iter, theta_alpha, theta_beta, theta_gamma, w_spatial, w_bilateral, compat,
                 normalization, spatial_dims=2):
    """Validate the CRF parameters for ``n_labels`` labels; return a :class:`CrfParams`."""
    if isinstance(n_iter, (bool, np.bool_)) or not isinstance(n_iter, (numbers.Integral, np.integer)):
        raise TypeError(f"`n_iter` must be an int, got {type(n_iter).__name__}")
    if n_iter < 0:
        raise ValueError(f"`n_iter` must be >= 0, got {n_iter}")
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}")
    if compat is None:
        compat = potts(n_labels)
    else:
        compat = _weight(compat, "compat", n_labels)
        if not isinstance(compat, np.ndarray):
            raise ValueError(f"`compat` must be None (Potts) or an ({n_labels}, {n_labels}) array, got a scalar")
    return CrfParams(
        n_iter=int(n_iter),
        theta_alpha=positive_scalar(theta_alpha, "theta_alpha"),
        theta_beta=positive_scalar(theta_beta, "theta_beta"),
        theta_gamma=positive_scalar(theta_gamma, "theta_gamma"),
        w_spatial=_weight(w_spatial, "w_spatial", n_labels),
        w_bilateral=_weight(w_bilateral, "w_bilateral", n_labels),
        compat=compat,
        normalization=normalization,
        spatial_dims=int(spatial_dims),
    )


def _check_inputs(logits, image, spatial_dims):
    if isinstance(spatial_dims, (bool, np.bool_)) or not isinstance(spatial_dims, (numbers.Integral, np.integer)):
        raise TypeError(f"`spatial_dims` must be an int, got {type(spatial_dims).__name__}")
    if spatial_dims < 1:
        raise ValueError(f"`spatial_dims` must be >= 1, got {spatial_dims}")
    u = as_float_array(logits, "logits")
    if u.ndim < spatial_dims + 1:
        raise ValueError(
            f"`logits` must have shape (..., *spatial, L) with {spatial_dims} spatial axes, got shape {u.shape}"
        )
    check_nonempty(u, "logits")
    if u.shape[-1] < 2:
        raise ValueError(f"`logits` has {u.shape[-1]} label(s) in its last axis; a CRF needs L >= 2")
    check_finite(u, "logits")
    img = np.asarray(image)
    if img.dtype.kind not in "fiu" or img.dtype == np.bool_:
        raise TypeError(f"`image` must be a real numeric array (uint8 or float), got dtype {img.dtype}")
    if img.shape == u.shape[:-1]:
        img = img[..., None]  # single-channel image given without its channel axis
    if img.shape[:-1] != u.shape[:-1]:
        raise ValueError(
            f"`image` has shape {img.shape} but `logits` has shape {u.shape}; all axes but the last must match "
            f"(batch and spatial): resize one to match"
        )
    check_nonempty(img, "image")
    if img.dtype.kind == "f":
        check_finite(img, "image")
    return u, img  # in its own dtype: the bilateral features convert it (no float64 copy of the whole batch)


def _combined(params):
    """``A = mu W`` for both kernels, so that ``Z = U - S A_s^T - B A_b^T``."""
    mu = params.compat
    a_s = mu * params.w_spatial if np.ndim(params.w_spatial) == 0 else mu @ params.w_spatial
    a_b = mu * params.w_bilateral if np.ndim(params.w_bilateral) == 0 else mu @ params.w_bilateral
    return a_s, a_b


class Transform(NamedTuple):
    """The matrices ``A_s``, ``A_b`` in the compute dtype, and their Potts shortcut ``c (J - I)`` if exact."""

    a_s: np.ndarray
    a_b: np.ndarray
    potts: bool
    c_s: float
    c_b: float

    @classmethod
    def of(cls, a_s, a_b, dtype):
        off = potts(a_s.shape[0])
        c_s, c_b = a_s[0, 1], a_b[0, 1]
        is_potts = bool(np.array_equal(a_s, c_s * off) and np.array_equal(a_b, c_b * off))
        return cls(np.ascontiguousarray(a_s, dtype=dtype), np.ascontiguousarray(a_b, dtype=dtype), is_potts,
                   dtype.type(c_s), dtype.type(c_b))


def build_kernels(image_flat, spatial_shape, params, dtype):
    """The spatial and bilateral :class:`Kernel` of one image (``image_flat``: ``(N, C)``, any real dtype).

    The bilateral one first: its float64 features are freed before the spatial ones are made.
    """
    kb = Kernel(
        bilateral_features(image_flat, spatial_shape, params.theta_alpha, params.theta_beta),
        params.normalization,
        dtype,
    )
    ks = Kernel(spatial_features(spatial_shape, params.theta_gamma), params.normalization, dtype)
    return ks, kb


def tiny(dtype):
    """Values below this are flushed to zero in the softmax and its backward (see ``_meanfield_kernels``)."""
    return np.finfo(dtype).tiny  # the smallest normal number: flush subnormals only


def forward_one(u, ks, kb, tr, n_iter, trace=None, q=None, want_z=True, weights=None):
    """Mean field on one image: ``u`` ``(N, L)``, ``tr`` a :class:`Transform`; returns ``(Z_T, Q_T)``.

    ``trace``, if given, is ``(q_in, s, b)``, each ``(T, N, L)``, filled with the iterates. ``q``, if given,
    is where ``Q_T`` goes. ``want_z=False`` skips storing ``Z`` (None is returned for it). ``weights``, if given,
    is ``(w_s, w_b)`` for scalar kernel weights, with ``tr`` the transform of the compatibility alone: both
    kernels then add into one message array ``w_s K_s Q + w_b K_b Q`` (one array less, read once).
    """
    q = np.empty_like(u) if q is None else q
    eps = tiny(u.dtype)
    MK.softmax_rows(u, q, eps)
    if n_iter == 0:
        return (u if want_z else None), q
    share_workspace((ks, kb), u.shape[1], u.dtype)
    absent = np.empty((0, u.shape[1]), u.dtype)  # an array without rows: "not stored" to combine_softmax
    z = np.empty_like(u) if want_z else absent
    if trace is None:  # else each iteration's s and b are its trace slots
        s = np.empty_like(u)
        b = absent if weights is not None else np.empty_like(u)
    for t in range(n_iter):
        if trace is not None:
            trace[0][t] = q
            s, b = trace[1][t], trace[2][t]
        if weights is not None:
            ks.apply(q, s, scale=weights[0])
            kb.apply(q, s, scale=weights[1], accumulate=True)
        else:
            ks.apply(q, s)
            kb.apply(q, b)
        MK.combine_softmax(u, s, b, tr.a_s, tr.a_b, tr.potts, tr.c_s, tr.c_b, z, q, eps)
    return (z if want_z else None), q


def backward_one(dz, ks, kb, tr, q_in, s, b):
    """Reverse the iterations of one image from ``dZ_T``; returns ``(dU, dA_s, dA_b)``.

    No BLAS: the ``dZ^T S`` products are fused into :func:`combine_bwd` (multi-threaded BLAS had left its
    threads spinning beside Numba's, and single-threaded BLAS was the backward's largest cost).
    """
    du = np.zeros_like(dz)  # the kernels kept the workspace the forward gave them
    n_blocks = -(-dz.shape[0] // MK.BWD_ROWS)
    partial = np.empty((n_blocks, 2) + tr.a_s.shape, dtype=dz.dtype)
    da_s = np.zeros(tr.a_s.shape)
    da_b = np.zeros(tr.a_b.shape)
    ds = np.empty_like(dz)
    db = np.empty_like(dz)
    dq_s = np.empty_like(dz)
    dq_b = np.empty_like(dz)
    for t in range(q_in.shape[0] - 1, -1, -1):
        # Z = U - S A_s^T - B A_b^T: du += dZ, dA = -dZ^T S, dS = -dZ A (sign folded into iteration_bwd)
        MK.combine_bwd(dz, s[t], b[t], tr.a_s, tr.a_b, tr.potts, tr.c_s, tr.c_b, ds, db, du, partial)
        total = partial.sum(axis=0, dtype=np.float64)
        da_s -= total[0]
        da_b -= total[1]
        ks.apply(ds, dq_s, transpose=True)
        kb.apply(db, dq_b, transpose=True)
        MK.iteration_bwd(q_in[t], dq_s, dq_b, dz, tiny(dz.dtype))
    du += dz
    return du, da_s, da_b


def _forward_image(img, u, spatial_shape, params, tr, trace, q, want_z, weights):
    ks, kb = build_kernels(img, spatial_shape, params, u.dtype)
    z, _ = forward_one(u, ks, kb, tr, params.n_iter, trace, q=q, want_z=want_z, weights=weights)
    return ks, kb, z


def _backward_image(residuals, i, grad, tr):
    if residuals.output == "probs":
        dz = np.empty_like(grad)
        MK.softmax_rows_bwd(residuals.q_out[i], grad, dz, tiny(dz.dtype))
    else:
        dz = grad.copy()
    ks, kb = residuals.kernels[i]
    return backward_one(dz, ks, kb, tr, residuals.q_in[i], residuals.s[i], residuals.b[i])


def meanfield_fwd(logits, image, *, n_iter=5, theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0,
                  w_bilateral=10.0, w_spatial=3.0, compat=None, normalization="symmetric", spatial_dims=2,
                  output="probs", keep_residuals=True):
    """Mean-field forward pass returning the output and the residuals for :func:`meanfield_bwd`.

    Parameters are those of :func:`meanfield`, plus:

    Parameters
    ----------
    output : {"probs", "logits"}
        ``"probs"`` returns ``Q_T``; ``"logits"`` returns the refined logits ``Z_T`` whose softmax is ``Q_T``
        (crfasrnn's output; ``logits`` themselves when ``n_iter == 0``).
    keep_residuals : bool
        False skips storing the iterates (inference only); the residuals are then None.

    Returns
    -------
    out : ndarray
        Shape and dtype of ``logits`` (float16 and other floats become float32).
    residuals : MeanfieldResiduals or None
        Holds the lattices (built once per image, reused by the backward) and, per iteration, ``Q_{t-1}``,
        ``K_s Q_{t-1}`` and ``K_b Q_{t-1}``: ``3 * L * itemsize`` bytes per pixel per iteration.
    """
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}, got {output!r}")
    u, img = _check_inputs(logits, image, spatial_dims)
    params = check_params(
        u.shape[-1], n_iter=n_iter, theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma,
        w_spatial=w_spatial, w_bilateral=w_bilateral, compat=compat, normalization=normalization,
        spatial_dims=spatial_dims,
    )
    spatial_shape = u.shape[-1 - spatial_dims:-1]
    n = int(np.prod(spatial_shape))
    n_lab = u.shape[-1]
    u3 = u.reshape(-1, n, n_lab)
    img3 = img.reshape(-1, n, img.shape[-1])
    n_batch = u3.shape[0]
    tr = Transform.of(*_combined(params), u.dtype)
    out = np.empty_like(u3)
    q_out = np.empty_like(u3) if keep_residuals or output != "probs" else out
    kernels = []
    if keep_residuals:
        trace_shape = (n_batch, params.n_iter, n, n_lab)
        q_in, s, b = (np.empty(trace_shape, dtype=u.dtype) for _ in range(3))
    # scalar kernel weights: S A_s^T + B A_b^T = (w_s S + w_b B) mu^T, one message array (not for training,
    # whose gradients need S and B apart)
    weights = None
    if not keep_residuals and np.ndim(params.w_spatial) == 0 and np.ndim(params.w_bilateral) == 0:
        tr = Transform.of(params.compat, np.zeros_like(params.compat), u.dtype)
        weights = (params.w_spatial, params.w_bilateral)
    for i in range(n_batch):
        trace = (q_in[i], s[i], b[i]) if keep_residuals else None
        # one image at a time on crfcore's compute thread, whichever Python thread calls: no oversubscription
        ks, kb, z = _parallel.run(_forward_image, img3[i], u3[i], spatial_shape, params, tr, trace, q_out[i],
                                  output != "probs", weights)
        if output != "probs":
            out[i] = z
        elif q_out is not out:
            out[i] = q_out[i]
        if keep_residuals:
            kernels.append((ks, kb))
    out = out.reshape(u.shape)
    if not keep_residuals:
        return out, None
    res = MeanfieldResiduals(params, output, u.shape, u.dtype, kernels, q_in, s, b, q_out)
    return out, res


def meanfield_bwd(residuals, grad):
    """Exact gradient of the unrolled mean field, given the output's gradient ``grad``.

    Parameters
    ----------
    residuals : MeanfieldResiduals
        From :func:`meanfield_fwd`.
    grad : array_like
        Gradient of the loss w.r.t. the forward's output, same shape as the output.

    Returns
    -------
    MeanfieldGrads
        ``logits`` (shape and dtype of the forward's logits), ``compat`` ``(L, L)`` (also when the forward used
        the Potts default) and ``w_spatial`` / ``w_bilateral`` (a float or ``(L, L)``, as they were given).
    """
    if not isinstance(residuals, MeanfieldResiduals):
        raise TypeError("`residuals` must be the second value returned by meanfield_fwd(..., keep_residuals=True)")
    g = as_float_array(grad, "grad", dtype=residuals.dtype)
    if g.shape != residuals.shape:
        raise ValueError(f"`grad` must have the output's shape {residuals.shape}, got {g.shape}")
    check_finite(g, "grad")
    p = residuals.params
    n_batch, n_iter, n, n_lab = residuals.q_in.shape
    g3 = g.reshape(n_batch, n, n_lab)
    tr = Transform.of(*_combined(p), residuals.dtype)
    d_logits = np.empty_like(g3)
    da_s = np.zeros((n_lab, n_lab))
    da_b = np.zeros((n_lab, n_lab))
    for i in range(n_batch):
        du, das, dab = _parallel.run(_backward_image, residuals, i, g3[i], tr)
        d_logits[i] = du
        da_s += das
        da_b += dab
    # A_s = mu W_s, A_b = mu W_b
    ws = p.w_spatial if np.ndim(p.w_spatial) else p.w_spatial * np.eye(n_lab)
    wb = p.w_bilateral if np.ndim(p.w_bilateral) else p.w_bilateral * np.eye(n_lab)
    d_compat = da_s @ ws.T + da_b @ wb.T
    d_ws = p.compat.T @ da_s
    d_wb = p.compat.T @ da_b
    d_ws = float(np.trace(d_ws)) if np.ndim(p.w_spatial) == 0 else d_ws
    d_wb = float(np.trace(d_wb)) if np.ndim(p.w_bilateral) == 0 else d_wb
    return MeanfieldGrads(d_logits.reshape(residuals.shape), d_compat, d_ws, d_wb)


def meanfield(logits, image, *, n_iter=5, theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0, w_bilateral=10.0,
              w_spatial=3.0, compat=None, normalization="symmetric", spatial_dims=2):
    """Dense-CRF mean-field inference (Krähenbühl & Koltun 2011): refine per-pixel class scores.

    Parameters
    ----------
    logits : array_like, shape (..., *spatial, L)
        Unnormalised class scores (higher is more likely), e.g. a network's output before softmax; the unary
        potential is ``-logits``. Leading axes are a batch. float32 or float64 (other floats become float32).
    image : array_like, shape (..., *spatial, C)
        The image that guides the bilateral kernel, same leading and spatial shape as ``logits``; uint8 or
        float in its own units (``theta_beta`` is in those units); any number of channels. A single-channel
        image may omit its channel axis.
    n_iter : int, default 5
        Mean-field iterations; 0 returns ``softmax(logits)``.
    theta_alpha : float, default 80.0
        Bilateral kernel width in pixels (pydensecrf's bilateral ``sxy``).
    theta_beta : float, default 13.0
        Bilateral kernel width in image units (pydensecrf's ``srgb``).
    theta_gamma : float, default 3.0
        Spatial (smoothness) kernel width in pixels (pydensecrf's Gaussian ``sxy``).
    w_bilateral, w_spatial : float or (L, L) array, defaults 10.0 and 3.0
        Kernel weights (pydensecrf's ``compat`` of each pairwise term); an ``(L, L)`` matrix mixes labels as
        crfasrnn's ``bilateral_ker_weights`` / ``spatial_ker_weights`` do.
    compat : (L, L) array or None
        Label compatibility ``mu(l, l')``, the penalty for labels ``l`` and ``l'`` at similar pixels. None is
        Potts, ``mu = 1 - I``.
    normalization : {"symmetric", "after", "before", "none"}
        Kernel normalisation: densecrf's default ``"symmetric"``, crfasrnn's ``"after"``.
    spatial_dims : int, default 2
        Number of spatial axes: 2 for images, 3 for volumes.

    Returns
    -------
    ndarray
        Probabilities ``Q`` with the shape of ``logits``, summing to 1 over the last axis.

    Examples
    --------
    >>> import numpy as np, crfcore
    >>> rng = np.random.default_rng(0)
    >>> image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    >>> logits = rng.normal(size=(32, 48, 2)).astype(np.float32)
    >>> q = crfcore.meanfield(logits, image, n_iter=5)
    >>> q.shape, q.dtype
    ((32, 48, 2), dtype('float32'))
    """
    q, _ = meanfield_fwd(
        logits, image, n_iter=n_iter, theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma,
        w_bilateral=w_bilateral, w_spatial=w_spatial, compat=compat, normalization=normalization,
        spatial_dims=spatial_dims, output="probs", keep_residuals=False,
    )
    return q
