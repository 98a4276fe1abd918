"""Mean-field inference and its exact backward on a CUDA device (``device="cuda"`` of :func:`crfcore.meanfield`,
:func:`crfcore.meanfield_fwd`, :func:`crfcore.meanfield_bwd`).

The steps of :mod:`crfcore.inference` and :mod:`crfcore._engine.iterations` on device arrays: the same model, the
same order of operations per iteration, the same gradients (logits, compatibility, kernel weights, widths, image).
Nothing crosses to the host but the few numbers a step needs (a lattice's size and feature range) and the
``(L, L)`` parameter gradients.
"""

from typing import NamedTuple

import numpy as np

from .._engine.iterations import Transform, tiny
from .._validation import LatticeRangeError, check_logits_shape, image_shape_with_channels
from .._kernels import cuda_meanfield as MK
from ..params import CrfParams
from . import device as dev
from .inputs import check_finite, check_grad, check_logits, device_input
from .kernel import CudaFeatureGrad, CudaKernel
from .lattice import feature_range


class CudaMeanfieldResiduals(NamedTuple):
    """What :func:`backward` needs, on the device: the kernels of each image and the forward's iterates."""

    params: CrfParams
    output: str
    shape: tuple  # the logits' shape
    dtype: np.dtype
    kernels: list  # per image: (spatial CudaKernel, bilateral CudaKernel)
    q_in: object  # (B, T, N, L) device: Q_{t-1}
    s: object  # (B, T, N, L) device: K_spatial Q_{t-1}
    b: object  # (B, T, N, L) device: K_bilateral Q_{t-1}
    q_out: object  # (B, N, L) device: Q_T
    image: object  # (B, N, C) device copy of the guidance image
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
    dev.launch(MK.features, n, img, dev.to_device(np.asarray(spatial_shape, dtype=np.int64)),
               dev.to_device(np.ascontiguousarray(widths)), dev.to_device(np.ascontiguousarray(beta)), bilateral, out)
    return out


def _kernels(img, spatial_shape, params, dtype):
    """The spatial and bilateral :class:`CudaKernel` of one image, with the CPU's messages for too-small widths."""
    try:
        kb = CudaKernel(_features(img, spatial_shape, params, True), params.normalization, dtype)
    except LatticeRangeError as exc:
        raise LatticeRangeError(f"`theta_alpha` or `theta_beta` is too small for this image ({exc}); use larger widths or "
                         f"rescale the image") from None
    try:
        ks = CudaKernel(_features(img, spatial_shape, params, False), params.normalization, dtype)
    except LatticeRangeError as exc:
        raise LatticeRangeError(f"`theta_gamma` is too small for the image size ({exc}); use a larger width") from None
    return ks, kb


def forward(u, img, spatial_shape, params, tr_mats, output, keep_residuals, image_shape, on_device):
    """Mean field on device arrays ``u`` (logits) and ``img`` (with its channel axis); returns ``(out,
    residuals)``, ``out`` a device array of ``u``'s shape (residuals None unless ``keep_residuals``)."""
    dtype = np.dtype(u.dtype)
    n = int(np.prod(spatial_shape))
    n_lab = tuple(u.shape)[-1]
    u3 = u.reshape(-1, n, n_lab)
    img3 = img.reshape(-1, n, tuple(img.shape)[-1])
    n_batch = u3.shape[0]
    n_iter = params.n_iter
    eps = tiny(dtype)
    out = dev.empty(u3.shape, dtype)
    fused = not keep_residuals and np.ndim(params.w_spatial) == 0 and np.ndim(params.w_bilateral) == 0
    tr = Transform.of((params.compat,) if fused else tr_mats, dtype)
    a0, c0 = tr.pair(0)
    a1, c1 = tr.pair(1)
    a0, a1 = dev.to_device(a0), dev.to_device(a1)
    if keep_residuals:
        trace = (n_batch, n_iter, n, n_lab)
        q_in, s, b = dev.empty(trace, dtype), dev.empty(trace, dtype), dev.empty(trace, dtype)
        q_out = dev.empty(u3.shape, dtype)
    kernels = []
    for i in range(n_batch):
        ui = u3[i]
        qi = q_out[i] if keep_residuals else (out[i] if output == "probs" else dev.empty((n, n_lab), dtype))
        if n_iter == 0:
            dev.launch(MK.softmax, n, ui, qi, eps)
            if output == "logits":
                dev.copy(ui, out[i])
            elif keep_residuals:
                dev.copy(qi, out[i])
            kernels.append(None)
            continue
        ks, kb = _kernels(img3[i], spatial_shape, params, dtype)
        kernels.append((ks, kb))
        if keep_residuals:
            dev.launch(MK.softmax, n, ui, q_in[i, 0], eps)
        else:
            dev.launch(MK.softmax, n, ui, qi, eps)
            msg = dev.empty((n, n_lab), dtype)
            msg_b = dev.empty((n, n_lab), dtype) if not fused else msg
        for t in range(n_iter):
            if keep_residuals:
                q, ms, mb = q_in[i, t], s[i, t], b[i, t]
                q_next = q_in[i, t + 1] if t + 1 < n_iter else qi
            else:
                q, ms, mb, q_next = qi, msg, msg_b, qi
            last = t == n_iter - 1
            z = out[i] if output == "logits" and last else ms  # a dummy where Z is not stored
            if fused:
                ks.apply(q, ms, scale=params.w_spatial)
                kb.apply(q, ms, scale=params.w_bilateral, accumulate=True)
            else:
                ks.apply(q, ms)
                kb.apply(q, mb)
            dev.launch(MK.combine_softmax, n, ui, ms, mb, a0, a1, tr.potts, c0, c1, not fused, z,
                       output == "logits" and last, q_next, eps)
        if output == "probs" and keep_residuals:
            dev.copy(qi, out[i])
    out = out.reshape(u.shape)
    if not keep_residuals:
        return out, None
    image = dev.empty(img3.shape, img3.dtype)
    dev.copy(img3, image)
    return out, CudaMeanfieldResiduals(params, output, tuple(u.shape), dtype, kernels, q_in, s, b, q_out, image,
                                       image_shape, on_device)


def backward(res, grad, features, tr_mats):
    """The gradients of :func:`crfcore.meanfield_bwd` for device residuals: ``(d_logits, dA_s, dA_b, sums_s,
    sums_b, d_image)``; ``d_logits`` and ``d_image`` device arrays, the rest host float64."""
    p = res.params
    dtype = res.dtype
    n_batch, n_iter, n, n_lab = res.q_in.shape
    g = check_grad(grad, res.shape, dtype)
    g3 = g.reshape(n_batch, n, n_lab)
    eps = tiny(dtype)
    tr = Transform.of(tr_mats, dtype)
    a0, a1 = dev.to_device(tr.mats[0]), dev.to_device(tr.mats[1])
    c0, c1 = tr.coefs
    d_logits = dev.empty((n_batch, n, n_lab), dtype)
    da = dev.zeros((2, n_lab, n_lab), np.float64)
    n_sp = p.spatial_dims
    n_ch = tuple(res.image.shape)[-1]
    sums_s, sums_b = np.zeros(n_sp), np.zeros(n_sp + n_ch)
    d_image = dev.zeros(res.image.shape, dtype) if features else None
    n_blocks = -(-n // MK.BLOCK_ROWS)
    partial = dev.empty((n_blocks, 2, n_lab, n_lab), np.float64)
    spatial_shape = res.shape[-1 - n_sp:-1]
    beta = dev.to_device(np.broadcast_to(np.asarray(p.theta_beta, np.float64), (n_ch,)).copy())
    run = features and n_iter > 0
    for i in range(n_batch):
        dz = dev.empty((n, n_lab), dtype)
        if res.output == "probs":
            dev.launch(MK.softmax_rows_bwd, n, res.q_out[i], g3[i], dz, eps)
        else:
            dev.copy(g3[i], dz)
        du = d_logits[i]
        dev.fill(du, 0)
        if n_iter == 0:
            dev.copy(dz, du)
            continue
        ks, kb = res.kernels[i]
        grads = (CudaFeatureGrad(ks), CudaFeatureGrad(kb)) if run else None
        ds, db = dev.empty((n, n_lab), dtype), dev.empty((n, n_lab), dtype)
        dq_s, dq_b = dev.empty((n, n_lab), dtype), dev.empty((n, n_lab), dtype)
        for t in range(n_iter - 1, -1, -1):
            s_t, b_t, q_t = res.s[i, t], res.b[i, t], res.q_in[i, t]
            dev.launch(MK.combine_bwd, n, dz, a0, a1, tr.potts, c0, c1, ds, db, du, True)
            dev.launch(MK.outer_blocks, n_blocks * n_lab * n_lab, dz, s_t, b_t, partial)
            dev.launch(MK.sum_blocks, 2 * n_lab * n_lab, partial, da)
            blurred = ks.apply(ds, dq_s, transpose=True)
            if grads:
                grads[0].add_message(q_t, s_t, ds, dq_s, blurred)
            blurred = kb.apply(db, dq_b, transpose=True)
            if grads:
                grads[1].add_message(q_t, b_t, db, dq_b, blurred)
            dev.launch(MK.iteration_bwd, n, q_t, dq_s, dq_b, dz, eps)
        dev.launch(MK.add, n * n_lab, dz, du)
        if not run:
            continue
        img = res.image[i]
        fs = _features(img, spatial_shape, p, False)
        fb = _features(img, spatial_shape, p, True)
        df_s, df_b = grads[0].result(fs), grads[1].result(fb)
        sums_s += _column_dots(df_s, fs)
        sums_b += _column_dots(df_b, fb)
        dev.launch(MK.image_grad, n * n_ch, df_b, n_sp, beta, d_image[i])
    da = dev.to_host(da)
    return d_logits.reshape(res.shape), da[0], da[1], sums_s, sums_b, d_image


def _column_dots(a, b):
    n, d = a.shape
    n_blocks = -(-n // MK.BLOCK_ROWS)
    partial = dev.empty((n_blocks, d), np.float64)
    dev.launch(MK.column_dots, n_blocks * d, a, b, 0, partial)
    return dev.to_host(partial).sum(axis=0)
