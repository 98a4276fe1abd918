"""Mean-field inference and its exact backward on a CUDA device (``device="cuda"`` of :func:`crfcore.meanfield`,
:func:`crfcore.meanfield_fwd`, :func:`crfcore.meanfield_bwd`).

Meanfield is a CRF with two standard terms, run per image through :mod:`crfcore._cuda.crf`: the spatial term
(features ``p / theta_gamma``, weight ``w_spatial``) and the bilateral one (``(p / theta_alpha, I / theta_beta)``,
``w_bilateral``), both with the compatibility and normalisation of the parameters, their features made on the device.
The backward turns the terms' gradients into meanfield's: the transforms', the features' column sums (for the
widths) and the image's. Nothing crosses to the host but the few numbers a step needs (a lattice's size and feature
range) and the ``(L, L)`` parameter gradients.
"""

from typing import NamedTuple

import numpy as np

from .._kernels import cuda_meanfield as CK
from .._validation import LatticeRangeError, check_logits_shape, image_shape_with_channels
from ..params import CheckedTerm, CrfParams
from . import device as dev
from .crf import backward_checked, forward_checked
from .inputs import check_finite, check_grad, check_logits, device_input
from .kernel import CudaKernel
from .lattice import feature_range


class CudaMeanfieldResiduals(NamedTuple):
    """What :func:`backward` needs, on the device: per image, the residuals of its two terms."""

    params: CrfParams
    output: str
    shape: tuple  # the logits' shape
    dtype: np.dtype
    per_image: list  # per image: CudaCrfResiduals of the spatial and the bilateral term (in that order)
    image_shape: tuple
    on_device: bool  # the forward's logits were a device array: the backward returns device arrays too


def check_inputs(logits, image, spatial_dims):
    """The checks of :func:`crfcore.inference._check_inputs` on device (or host) inputs: ``(u, img, on_device,
    image range)`` with ``u``, ``img`` device arrays (``img`` with its channel axis) and the image's ``(min, max)``
    for :func:`crfcore.inference._check_image_range` (None for 8-bit images, which it does not check)."""
    if np.ndim(logits) == 0 and not dev.is_device_array(logits):
        raise ValueError("`logits` is a scalar; pass an array of shape (..., *spatial, L)")
    u, on_device = device_input(logits, "logits", float_only=True)
    check_logits_shape(tuple(u.shape), spatial_dims)
    check_logits(u)
    img, _ = device_input(image, "image", float_only=False)
    img = img.reshape(*image_shape_with_channels(tuple(u.shape), tuple(img.shape), spatial_dims))
    dtype = np.dtype(img.dtype)
    if dtype.kind == "f":
        return u, img, on_device, check_finite(img, "image")
    if dtype in (np.uint8, np.int8):
        return u, img, on_device, None
    lo, hi, _ = feature_range(img.reshape(-1, 1))
    return u, img, on_device, (float(lo[0]), float(hi[0]))


def _features(img, spatial_shape, params, bilateral):
    """The bilateral (``(p / theta_alpha, I / theta_beta)``) or spatial (``p / theta_gamma``) features of one image
    ``img`` ``(N, C)`` on the device, float64 ``(N, d)``."""
    n, n_ch = img.shape
    n_sp = len(spatial_shape)
    widths = params.theta_alpha if bilateral else params.theta_gamma
    widths = np.broadcast_to(np.asarray(widths, dtype=np.float64), (n_sp,))
    beta = np.broadcast_to(np.asarray(params.theta_beta, dtype=np.float64), (n_ch,))
    out = dev.empty((n, n_sp + (n_ch if bilateral else 0)), np.float64)
    dev.launch(CK.features, n, img, dev.to_device(np.asarray(spatial_shape, dtype=np.int64)),
               dev.to_device(np.ascontiguousarray(widths)), dev.to_device(np.ascontiguousarray(beta)), bilateral, out)
    return out


def _terms(img, spatial_shape, params, dtype):
    """The spatial and bilateral terms of one image (:class:`CheckedTerm`\\ s, device features) and their
    :class:`CudaKernel`\\ s (None each without iterations), with the CPU's messages for too-small widths."""
    fb = _features(img, spatial_shape, params, True)
    fs = _features(img, spatial_shape, params, False)
    terms = [CheckedTerm(fs, params.w_spatial, params.compat, params.normalization),
             CheckedTerm(fb, params.w_bilateral, params.compat, params.normalization)]
    if params.n_iter == 0:  # the iterations would not filter: no lattices
        return terms, [None, None]
    try:
        kb = CudaKernel(fb, params.normalization, dtype)
    except LatticeRangeError as exc:
        raise LatticeRangeError(f"`theta_alpha` or `theta_beta` is too small for this image ({exc}); use larger "
                                f"widths or rescale the image") from None
    try:
        ks = CudaKernel(fs, params.normalization, dtype)
    except LatticeRangeError as exc:
        raise LatticeRangeError(f"`theta_gamma` is too small for the image size ({exc}); use a larger width") from None
    return terms, [ks, kb]


def forward(u, img, spatial_shape, params, output, keep_residuals, image_shape, on_device):
    """Mean field on device arrays ``u`` (logits) and ``img`` (with its channel axis); returns ``(out,
    residuals)``, ``out`` a device array of ``u``'s shape (residuals None unless ``keep_residuals``)."""
    dtype = np.dtype(u.dtype)
    n = int(np.prod(spatial_shape))
    n_lab = tuple(u.shape)[-1]
    u3 = u.reshape(-1, n, n_lab)
    img3 = img.reshape(-1, n, tuple(img.shape)[-1])
    out = dev.empty(u3.shape, dtype)
    per_image = []
    for i in range(u3.shape[0]):
        terms, kernels = _terms(img3[i], spatial_shape, params, dtype)
        _, res = forward_checked(u3[i], terms, (True, True), params.n_iter, output, keep_residuals, True, kernels,
                                 out[i])
        per_image.append(res)
    out = out.reshape(u.shape)
    if not keep_residuals:
        return out, None
    return out, CudaMeanfieldResiduals(params, output, tuple(u.shape), dtype, per_image, image_shape, on_device)


def backward(res, grad, features):
    """The gradients of :func:`crfcore.meanfield_bwd` for device residuals: ``(d_logits, dA_s, dA_b, sums_s,
    sums_b, d_image)``; ``d_logits`` and ``d_image`` device arrays, the rest host float64."""
    p = res.params
    g = check_grad(grad, res.shape, res.dtype)
    n_batch, n_iter, n_lab = len(res.per_image), p.n_iter, res.shape[-1]
    n = int(np.prod(res.shape[-1 - p.spatial_dims:-1]))
    g3 = g.reshape(n_batch, n, n_lab)
    d_logits = dev.empty((n_batch, n, n_lab), res.dtype)
    da = dev.zeros((2, n_lab, n_lab), np.float64)  # both terms' transforms, summed over the images
    n_sp = p.spatial_dims
    n_ch = tuple(res.per_image[0].terms[1].features.shape)[1] - n_sp
    sums_s, sums_b = np.zeros(n_sp), np.zeros(n_sp + n_ch)
    d_image = dev.zeros((n_batch, n, n_ch), res.dtype) if features else None
    beta = dev.to_device(np.broadcast_to(np.asarray(p.theta_beta, np.float64), (n_ch,)).copy())
    run = features and n_iter > 0  # without iterations the kernels play no part: zeros
    for i, image in enumerate(res.per_image):
        du, _, dfs = backward_checked(image, g3[i], run, da)
        dev.copy(du, d_logits[i])
        if run:
            fs, fb = (t.features for t in image.terms)
            sums_s += _column_dots(dfs[0], fs)
            sums_b += _column_dots(dfs[1], fb)
            dev.launch(CK.image_grad, n * n_ch, dfs[1], n_sp, beta, d_image[i])
    da = dev.to_host(da)
    return d_logits.reshape(res.shape), da[0], da[1], sums_s, sums_b, d_image


def _column_dots(a, b):
    n, d = a.shape
    n_blocks = -(-n // CK.BLOCK_ROWS)
    partial = dev.empty((n_blocks, d), np.float64)
    dev.launch(CK.column_dots, n_blocks * d, a, b, 0, partial)
    return dev.to_host(partial).sum(axis=0)
