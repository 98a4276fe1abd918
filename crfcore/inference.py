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

import os
import threading
import warnings
from typing import NamedTuple

import numpy as np

from . import warmup
from ._engine.kernel import Kernel
from ._runtime import parallel as _parallel
from ._validation import (LatticeRangeError, as_float_array, check_backward_device, check_device, check_finite,
                          check_logits_shape, check_logits_values, check_spatial_dims, host_array,
                          image_shape_with_channels)
from .features import bilateral_features, spatial_features
from .params import DEFAULTS, NORMALIZATIONS, CheckedTerm, CrfParams, check_params, matrix, potts  # noqa: F401
from .terms import OUTPUTS, CrfModel, run_backward, term_grads
from .warmup import numpy_lattice

class MeanfieldResiduals(NamedTuple):
    """What the backward needs: per image, the residuals of :func:`crfcore.crf_fwd` for its two terms (their
    kernels, features and the forward's iterates)."""

    params: CrfParams
    output: str
    shape: tuple  # the logits' shape
    dtype: np.dtype
    per_image: list  # per image: CrfResiduals of the spatial and the bilateral term (in that order)
    image_shape: tuple  # the image's shape as given


class MeanfieldGrads(NamedTuple):
    """Gradients of a scalar loss w.r.t. the mean-field inputs, each in the form its input was given.

    The kernel widths and the image are None when :func:`meanfield_bwd` was called with ``features=False``.
    """

    logits: np.ndarray
    compat: np.ndarray  # (L, L)
    w_spatial: object  # float or (L, L), as the weight was given
    w_bilateral: object
    theta_alpha: object = None  # float, or one value per spatial axis
    theta_beta: object = None  # float, or one value per image channel
    theta_gamma: object = None  # float, or one value per spatial axis
    image: np.ndarray = None  # the image's shape, in the compute dtype


def _check_inputs(logits, image, spatial_dims):
    check_spatial_dims(spatial_dims)
    if np.ndim(logits) == 0:
        raise ValueError("`logits` is a scalar; pass an array of shape (..., *spatial, L)")
    u = as_float_array(logits, "logits")
    check_logits_shape(u.shape, spatial_dims)
    check_logits_values(u, "logits")
    img = host_array(image, "image")
    if img.dtype.kind not in "fiu" or img.dtype == np.bool_:
        raise TypeError(f"`image` must be a real numeric array (uint8 or float), got dtype {img.dtype}")
    img = img.reshape(image_shape_with_channels(u.shape, img.shape, spatial_dims))
    if img.dtype.kind == "f":
        check_finite(img, "image")
    return u, img  # in its own dtype: the bilateral features convert it (no float64 copy of the whole batch)


_warned_scale = set()


def _check_image_scale(img, theta_beta):
    if img.dtype == np.uint8 or img.dtype == np.int8:
        return
    _check_image_range(float(np.min(img)), float(np.max(img)), theta_beta)


def _check_image_range(lo, hi, theta_beta):
    """Warn once per process when the image's value range says ``theta_beta`` is in other units: a float image in
    [0, 1] with a width of 0-255 images (the bilateral kernel then sees every colour as the same), or values far
    beyond 255 (16-bit) with a width of 8-bit ones (the kernel then separates nearly every pixel)."""
    beta = float(np.max(theta_beta))
    if hi <= 1.0 and lo >= -1.0 and beta >= 2.0 and "unit" not in _warned_scale:
        _warned_scale.add("unit")
        warnings.warn(f"`image` values lie in [{lo:.3g}, {hi:.3g}] but theta_beta={beta:g} is in 0-255 units: the "
                      f"bilateral kernel sees every colour as the same. Pass theta_beta in the image's units "
                      f"({beta:g}/255 = {beta / 255:.3g}) or the image in 0-255", UserWarning, stacklevel=5)
    elif hi > 1024 and beta * 40 < hi and "wide" not in _warned_scale:
        _warned_scale.add("wide")
        warnings.warn(f"`image` values reach {hi:.6g} (16-bit?) but theta_beta={beta:g} is a width for 0-255 "
                      f"images: the bilateral kernel separates nearly every pixel. Pass theta_beta in the image's "
                      f"units (x257 for 16-bit: {beta * 257:g})", UserWarning, stacklevel=5)


def _parameter_terms(params):
    """The spatial and the bilateral term's weight, compatibility and normalisation (no features): what their
    transforms ``A = mu W`` and their weight and compatibility gradients are made from."""
    return [CheckedTerm(None, w, params.compat, params.normalization) for w in (params.w_spatial, params.w_bilateral)]


def image_model(image_flat, spatial_shape, params, dtype):
    """The :class:`~crfcore.terms.CrfModel` of one image's two terms: the spatial one (features ``p / theta_gamma``,
    weight ``w_spatial``) and the bilateral one (``(p / theta_alpha, I / theta_beta)``, ``w_bilateral``), both with
    the compatibility and normalisation of ``params``. ``image_flat``: ``(N, C)``, any real dtype.

    The spatial kernel depends on the image's shape alone and comes from a cache of recent shapes
    (:func:`_spatial_kernel`). Features too large for the lattice are reported by the argument that made them so
    (a width too small, or the image's values).
    """
    try:
        fb = bilateral_features(image_flat, spatial_shape, params.theta_alpha, params.theta_beta)
        kb = Kernel(fb, params.normalization, dtype)
    except LatticeRangeError:
        positions = max(spatial_shape) / np.min(params.theta_alpha)
        colours = float(np.max(np.abs(image_flat))) / np.min(params.theta_beta)
        culprit = ("`theta_alpha` is too small for the image size" if positions >= colours else
                   "`theta_beta` is too small for the image's values (or `image` holds huge values)")
        raise LatticeRangeError(f"{culprit}: positions / theta_alpha reach {positions:.3g} and image / theta_beta "
                                f"{colours:.3g}, too large for the lattice; use larger widths or rescale the "
                                f"image") from None
    fs, ks = _spatial_kernel(tuple(spatial_shape), params.theta_gamma, params.normalization, np.dtype(dtype))
    ks = ks.with_own_workspace()  # the cached kernel may filter another image on another thread meanwhile
    terms = [CheckedTerm(fs, params.w_spatial, params.compat, params.normalization),
             CheckedTerm(fb, params.w_bilateral, params.compat, params.normalization)]
    return CrfModel.of_checked(terms, fs.shape[0], params.compat.shape[0], dtype, kernels=[ks, kb])


#: The spatial kernels of recent calls: ``(shape, widths, normalization, dtype) -> (features, Kernel)``. The spatial
#: term depends on the image's shape and ``theta_gamma`` alone, so a data set of same-sized images (or a batch)
#: builds its lattice once. Used on crfcore's compute thread and the helpers running a batch's images beside it
#: (under :data:`_spatial_lock`); kernels are read-only but for their scratch buffers, which each image gets of its
#: own (:meth:`~crfcore._engine.kernel.Kernel.with_own_workspace`) and drops after its forward and backward. At most
#: :data:`_SPATIAL_CACHE_ENTRIES` shapes and :data:`_SPATIAL_CACHE_POINTS` points are kept (about 44 bytes a point
#: in 2-D, 55 in 3-D: under 100 MB), and no image of more than half of those points (1024x1024 is kept).
_spatial_cache = {}
_SPATIAL_CACHE_POINTS = 1 << 21
_SPATIAL_CACHE_ENTRIES = 4
_spatial_lock = threading.Lock()  # images of a batch side by side: the first builds the shape's kernel, others wait


def _new_spatial_lock():  # a child forked while another thread built a kernel must not inherit the lock held
    global _spatial_lock
    _spatial_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_spatial_lock)


def _spatial_kernel(spatial_shape, theta_gamma, normalization, dtype):
    """The spatial term's features ``p / theta_gamma`` (read-only float64) and its :class:`Kernel`, built once per
    shape, widths, normalisation and dtype (the newest few kept)."""
    with _spatial_lock:
        return _cached_spatial_kernel(spatial_shape, theta_gamma, normalization, dtype)


def _cached_spatial_kernel(spatial_shape, theta_gamma, normalization, dtype):
    key = (spatial_shape, tuple(np.atleast_1d(theta_gamma).tolist()), normalization, dtype)
    hit = _spatial_cache.pop(key, None)
    if hit is None:
        try:
            fs = spatial_features(spatial_shape, theta_gamma)
            hit = (fs, Kernel(fs, normalization, dtype))
        except LatticeRangeError:
            raise LatticeRangeError(f"`theta_gamma` is too small for the image size: positions / theta_gamma reach "
                                    f"{max(spatial_shape) / np.min(theta_gamma):.3g}, too large for the lattice; "
                                    f"use a larger width") from None
        if hit[0].shape[0] > _SPATIAL_CACHE_POINTS // 2:  # a large image: not kept
            return hit
    _spatial_cache[key] = hit  # the newest last
    while (sum(f.shape[0] for f, _ in _spatial_cache.values()) > _SPATIAL_CACHE_POINTS
           or len(_spatial_cache) > _SPATIAL_CACHE_ENTRIES):
        del _spatial_cache[next(iter(_spatial_cache))]
    return hit


#: Images of at most this many pixels run side by side when a batch has several (each on its share of the threads),
#: larger ones one at a time on every thread. On 2 cores two threads on one 224x224 image run ~1.1-1.3x faster than
#: one thread, two images at once ~1.8x; at 1024x1024 one image on two threads is already ~1.8x.
ACROSS_MAX_PIXELS = 640 * 640
#: The pixels of the images in flight at once: their memory stays that of one call of 1280x1280.
ACROSS_PIXELS_AT_ONCE = 4 * ACROSS_MAX_PIXELS


def _each_image(n_batch, n_pixels, fn):
    """``[fn(i) for i in range(n_batch)]`` on the compute thread: small images side by side (see
    :data:`ACROSS_MAX_PIXELS`, :data:`ACROSS_PIXELS_AT_ONCE`), else one after the other."""
    if n_pixels <= ACROSS_MAX_PIXELS:
        return _parallel.across(fn, n_batch, at_once=max(1, ACROSS_PIXELS_AT_ONCE // max(n_pixels, 1)))
    return [fn(i) for i in range(n_batch)]


def _forward_image(img, u, spatial_shape, params, output, keep_residuals, out):
    """Mean field on one image (on crfcore's compute thread): its model, then :meth:`CrfModel.run_forward`."""
    model = image_model(img, spatial_shape, params, u.dtype)
    try:
        return model.run_forward(u, params.n_iter, output, keep_residuals, out=out)[1]
    finally:
        model.kernels[0].release_workspace()  # the cached spatial kernel: no scratch kept between calls


def _backward_image(res, g, features):
    """:func:`~crfcore.terms.run_backward` of one image (on crfcore's compute thread), the spatial kernel's scratch
    buffers dropped after it (the kernel is kept between calls)."""
    try:
        return run_backward(res, g, features)
    finally:
        res.model.kernels[0].release_workspace()


def _numpy_forward(img3, u3, spatial_shape, params, output, out):
    a_s, a_b = (matrix(t) for t in _parameter_terms(params))
    for i in range(u3.shape[0]):
        z, q = numpy_lattice.forward_image(img3[i], u3[i], spatial_shape, params, a_s, a_b)
        out[i] = q if output == "probs" else z
    return out


def _width_grad(column_sums, width):
    """``dl/dtheta`` for features ``x / theta``: ``-sum(df * f) / theta`` per column, in the width's form.

    ``column_sums`` are in the features' column order; spatial columns run last axis first, so callers
    reverse them into axis order.
    """
    if np.ndim(width) == 0:
        return float(-np.sum(column_sums) / width)
    return -column_sums / width


def meanfield_fwd(logits, image, *, n_iter=DEFAULTS["n_iter"], theta_alpha=DEFAULTS["theta_alpha"],
                  theta_beta=DEFAULTS["theta_beta"], theta_gamma=DEFAULTS["theta_gamma"],
                  w_bilateral=DEFAULTS["w_bilateral"], w_spatial=DEFAULTS["w_spatial"], compat=DEFAULTS["compat"],
                  normalization=DEFAULTS["normalization"], spatial_dims=DEFAULTS["spatial_dims"],
                  output="probs", keep_residuals=True, device="cpu"):
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
        Shape and dtype of ``logits`` (float16 and other floats become float32); with ``device="cuda"``, a Numba
        device array when ``logits`` was on the device.
    residuals : MeanfieldResiduals or None
        Per image, :func:`crfcore.crf_fwd`'s residuals of its two terms: the lattices (built once, reused by the
        backward), the terms' float64 features (``(2 * spatial_dims + C) * 8`` bytes per pixel) and, per iteration,
        ``Q_{t-1}``, ``K_s Q_{t-1}`` and ``K_b Q_{t-1}``: ``3 * L * itemsize`` bytes per pixel per iteration (on the
        device with ``device="cuda"``, where they are a ``CudaMeanfieldResiduals``).
    """
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}, got {output!r}")
    if check_device(device) == "cuda":
        return _cuda_forward(logits, image, spatial_dims, output, keep_residuals,
                             dict(n_iter=n_iter, theta_alpha=theta_alpha, theta_beta=theta_beta,
                                  theta_gamma=theta_gamma, w_spatial=w_spatial, w_bilateral=w_bilateral,
                                  compat=compat, normalization=normalization, spatial_dims=spatial_dims))
    u, img = _check_inputs(logits, image, spatial_dims)
    params = check_params(
        u.shape[-1], n_iter=n_iter, theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma,
        w_spatial=w_spatial, w_bilateral=w_bilateral, compat=compat, normalization=normalization,
        spatial_dims=spatial_dims, n_channels=img.shape[-1],
    )
    _check_image_scale(img, params.theta_beta)
    spatial_shape = u.shape[-1 - spatial_dims:-1]
    n = int(np.prod(spatial_shape))
    n_lab = u.shape[-1]
    u3 = u.reshape(-1, n, n_lab)
    img3 = img.reshape(-1, n, img.shape[-1])
    n_batch = u3.shape[0]
    out = np.empty_like(u3)
    if not keep_residuals and warmup.serve_with_numpy(u.dtype, n_lab, spatial_shape, img.shape[-1], n_batch):
        try:  # the kernels are not compiled yet: NumPy computes this call while they are (crfcore.warmup)
            return _numpy_forward(img3, u3, spatial_shape, params, output, out).reshape(u.shape), None
        except OverflowError:  # vertex keys too wide for the NumPy lattice: the compiled one
            pass
    # on crfcore's compute thread, whichever Python thread calls (no oversubscription): one image at a time on all
    # threads, or small images of a batch side by side, each on its share of them (_each_image)
    per_image = _parallel.run(_each_image, n_batch, n, lambda i: _forward_image(
        img3[i], u3[i], spatial_shape, params, output, bool(keep_residuals), out[i]))
    out = out.reshape(u.shape)
    if not keep_residuals:
        return out, None
    return out, MeanfieldResiduals(params, output, u.shape, u.dtype, per_image, np.shape(image))


def _cuda_forward(logits, image, spatial_dims, output, keep_residuals, kwargs):
    """:func:`meanfield_fwd` on the CUDA device (:mod:`crfcore._cuda`)."""
    check_spatial_dims(spatial_dims)
    from ._cuda import device as cuda_device

    cuda_device.require()  # before the kernels' module imports numba.cuda
    from ._cuda import meanfield as cuda_meanfield

    u, img, on_device, img_range = cuda_meanfield.check_inputs(logits, image, spatial_dims)
    params = check_params(tuple(u.shape)[-1], n_channels=tuple(img.shape)[-1], **kwargs)
    if img_range is not None:
        _check_image_range(*img_range, params.theta_beta)
    spatial_shape = tuple(u.shape)[-1 - spatial_dims:-1]
    image_shape = tuple(image.shape) if cuda_device.is_device_array(image) else np.shape(image)
    out, res = cuda_meanfield.forward(u, img, spatial_shape, params, output, keep_residuals, image_shape, on_device)
    return (out if on_device else cuda_device.to_host(out)), res


def _is_cuda_residuals(residuals):
    return type(residuals).__name__ == "CudaMeanfieldResiduals" and type(residuals).__module__ == "crfcore._cuda.meanfield"


def meanfield_bwd(residuals, grad, *, features=True, device=None):
    """Exact gradient of the unrolled mean field, given the output's gradient ``grad``.

    Parameters
    ----------
    residuals : MeanfieldResiduals
        From :func:`meanfield_fwd`.
    grad : array_like
        Gradient of the loss w.r.t. the forward's output, same shape as the output.
    features : bool, default True
        Also differentiate through the kernels' features: the widths ``theta_alpha``, ``theta_beta``,
        ``theta_gamma`` and the guidance ``image`` (including the normalisation, which depends on them). It
        costs about one more filtering per kernel and iteration; False skips it (those fields are None).
    device : {None, "cpu", "cuda"}
        Where the backward runs: where the forward ran (None, the default; naming another is an error). With
        ``"cuda"``, ``logits`` and ``image`` come back as device arrays when the forward's logits were, else as
        NumPy; the parameter gradients are host values either way.

    Returns
    -------
    MeanfieldGrads
        ``logits`` (shape and dtype of the forward's logits), ``compat`` ``(L, L)`` (also when the forward used
        the Potts default), ``w_spatial`` / ``w_bilateral`` (a float or ``(L, L)``, as they were given), and with
        ``features``: ``theta_alpha`` / ``theta_gamma`` (a float, or one per spatial axis), ``theta_beta`` (a
        float, or one per channel) and ``image`` (the image's shape, in the compute dtype). The features'
        gradient is that of the lattice as built: exact wherever no pixel's features sit on a simplex boundary.

    Notes
    -----
    The sparse permutohedral lattice is piecewise smooth in the widths and the image: each pixel's features sit in
    one simplex, and where a change of width moves them across a simplex boundary the filter jumps a little. The
    width and image gradients are exact on each smooth piece and do not see the jumps. On the integer pixel grid,
    round widths (``theta_alpha=6.0``, the defaults 80, 13 and 3) put whole rows and columns of pixels on
    boundaries: a finite difference there measures the jump (at ``theta_alpha=6.0`` a central difference with step
    6e-7 gave 19709 where the analytic gradient is 19.5; at 6.137 both give 10.08). Check gradients off such ties;
    for learning, a step moves across pieces and the loss still decreases in the large (:func:`crfcore.fit`; a
    trainable layer started on the round defaults trains as well as one started just off them, see
    ``CrfRnnLayer``).
    """
    on_cuda = _is_cuda_residuals(residuals)
    if not on_cuda and not isinstance(residuals, MeanfieldResiduals):
        raise TypeError("`residuals` must be the second value returned by meanfield_fwd(..., keep_residuals=True)")
    if not isinstance(features, (bool, np.bool_)):
        raise TypeError(f"`features` must be True or False, got {features!r}")
    check_backward_device(device, on_cuda)
    if on_cuda:
        return _cuda_backward(residuals, grad, bool(features))
    g = as_float_array(grad, "grad", dtype=residuals.dtype)
    if g.shape != residuals.shape:
        raise ValueError(f"`grad` must have the output's shape {residuals.shape}, got {g.shape}")
    check_finite(g, "grad")
    p = residuals.params
    n_batch = len(residuals.per_image)
    n_lab = residuals.shape[-1]
    g3 = g.reshape(n_batch, -1, n_lab)
    d_logits = np.empty_like(g3)
    n_sp = p.spatial_dims
    d_compat, d_ws, d_wb = np.zeros((n_lab, n_lab)), 0.0, 0.0
    sums_s = sums_b = d_image = None  # sums over pixels of df * f per feature column, over the batch
    if features:
        fs, fb = (term.features for term in residuals.per_image[0].model.terms)
        sums_s, sums_b = np.zeros(fs.shape[1]), np.zeros(fb.shape[1])
        d_image = np.empty((n_batch, fb.shape[0], fb.shape[1] - n_sp), dtype=residuals.dtype)

    def one_image(i):  # its logits' and image's gradients in place, and its terms' gradients
        res = residuals.per_image[i]
        grads = _backward_image(res, g3[i], bool(features))
        d_logits[i] = grads.logits
        ts, tb = grads.terms
        terms = (ts.compat + tb.compat, ts.weight, tb.weight)  # small: the features' gradients are not kept
        if not features:
            return terms, None, None
        fs, fb = (term.features for term in res.model.terms)
        # bilateral features are (positions / theta_alpha, image / theta_beta)
        d_image[i] = tb.features[:, n_sp:] / np.asarray(p.theta_beta)
        return terms, np.einsum("ij,ij->j", ts.features, fs), np.einsum("ij,ij->j", tb.features, fb)

    # like the forward, on the compute thread: images one after the other, or small ones side by side
    per_image = _parallel.run(_each_image, n_batch, g3.shape[1], one_image)
    for (compat, ws, wb), image_sums_s, image_sums_b in per_image:
        d_compat += compat  # summed in the images' order, whichever thread ran them
        d_ws, d_wb = d_ws + ws, d_wb + wb
        if features:
            sums_s += image_sums_s
            sums_b += image_sums_b
    d_image = d_image.reshape(residuals.image_shape) if features else None
    return _grads(p, d_logits.reshape(residuals.shape), (d_ws, d_wb), d_compat, sums_s, sums_b, d_image)


def _cuda_backward(residuals, grad, features):
    """:func:`meanfield_bwd` of a forward on the CUDA device."""
    from ._cuda import device as cuda_device
    from ._cuda import meanfield as cuda_meanfield

    p = residuals.params
    d_logits, da_s, da_b, sums_s, sums_b, d_image = cuda_meanfield.backward(residuals, grad, features)
    if features:
        d_image = d_image.reshape(*residuals.image_shape)
    if not residuals.on_device:
        d_logits = cuda_device.to_host(d_logits)
        d_image = cuda_device.to_host(d_image) if features else None
    # the terms' weight and compatibility gradients from dA_k, A_k = mu W_k, as crf_bwd gives them
    ts, tb = term_grads(_parameter_terms(p), (da_s, da_b), (None, None), da_s.shape[0])
    if not features:
        sums_s = sums_b = None
    return _grads(p, d_logits, (ts.weight, tb.weight), ts.compat + tb.compat, sums_s, sums_b, d_image)


def _grads(p, d_logits, d_weights, d_compat, sums_s, sums_b, d_image):
    """:class:`MeanfieldGrads` from the two terms' gradients and, with the features' gradient, the sums over
    pixels of ``df * f`` per feature column (None without) and the image's gradient."""
    widths = {}
    if sums_s is not None:  # spatial columns run last axis first: reversed into axis order
        n_sp = p.spatial_dims
        widths = dict(theta_alpha=_width_grad(sums_b[:n_sp][::-1], p.theta_alpha),
                      theta_beta=_width_grad(sums_b[n_sp:], p.theta_beta),
                      theta_gamma=_width_grad(sums_s[::-1], p.theta_gamma),
                      image=d_image)
    return MeanfieldGrads(d_logits, d_compat, *d_weights, **widths)


def meanfield(logits, image, *, n_iter=DEFAULTS["n_iter"], theta_alpha=DEFAULTS["theta_alpha"],
              theta_beta=DEFAULTS["theta_beta"], theta_gamma=DEFAULTS["theta_gamma"],
              w_bilateral=DEFAULTS["w_bilateral"], w_spatial=DEFAULTS["w_spatial"], compat=DEFAULTS["compat"],
              normalization=DEFAULTS["normalization"], spatial_dims=DEFAULTS["spatial_dims"], device="cpu"):
    """Dense-CRF mean-field inference (Krähenbühl & Koltun 2011): refine per-pixel class scores.

    Parameters
    ----------
    logits : array_like, shape ``(..., *spatial, L)``
        Unnormalised class scores (higher is more likely), e.g. a network's output before softmax; the unary
        potential is ``-logits``. Leading axes are a batch. float32 or float64 (other floats become float32).
        ``-inf`` marks a label impossible at a pixel (probability 0, as densecrf's ``+inf`` energies); NaN,
        ``+inf`` and a pixel with every label ``-inf`` raise a ValueError.
    image : array_like, shape ``(..., *spatial, C)``
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
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"`` runs on an NVIDIA GPU (needs ``pip install 'crfcore[cuda]'``). ``logits`` and ``image`` may then
        be NumPy arrays (copied to the GPU; the result comes back as NumPy) or any array with
        ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba device arrays: used in place; the result is
        a Numba device array). Results equal the CPU's to float rounding.

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
        spatial_dims=spatial_dims, output="probs", keep_residuals=False, device=device,
    )
    return q
