"""JAX adapter: ``crf_refine``, the dense CRF's mean field as a differentiable JAX function on crfcore's core.

``jax.custom_vjp`` over a call out of XLA: the forward runs :func:`crfcore.meanfield_fwd` and leaves its residuals
(lattices and iterates) in a bounded store under an integer handle; the backward runs the core's exact
:func:`crfcore.meanfield_bwd` on them (recomputing the forward if they were evicted). It works under ``jax.jit``,
``jax.grad`` and ``jax.vmap`` (the calls then run once per batch element).

The call is one of two (:data:`CALL_ENV`):

- ``jax.pure_callback`` (on the CPU, the default there): JAX hands the host NumPy copies of the arrays;
- an XLA FFI call (:mod:`crfcore.adapters._xla_ffi`; the default when JAX runs on a GPU and ``crfcore[cuda]`` is
  installed): XLA hands crfcore its own buffers in place. On a GPU they stay there, and crfcore's CUDA backend
  (``device="cuda"``) runs on XLA's stream: no host round trip, only the few parameter values are read back. On the
  CPU it runs the CPU core on XLA's buffers.
"""

import os
import warnings
from functools import partial

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    from jax.custom_derivatives import SymbolicZero
except ImportError as exc:  # the framework is an extra: say which
    raise ImportError(f"{__name__} needs JAX: pip install 'crfcore[jax]' ({exc})") from exc

from crfcore import meanfield_bwd, meanfield_fwd
from crfcore._shared import check_finite, check_layout, check_logits_values, cuda_backend, cuda_unavailable
from crfcore.params import DEFAULTS, check_n_iter, check_normalization, kernel_width

from . import _xla_ffi
from ._residuals import ResidualStore

__all__ = ["crf_refine"]

_STORE = ResidualStore()

#: ``auto`` (the default: the FFI call when JAX's default backend is a GPU and crfcore's CUDA backend can run there,
#: else the callback), ``ffi`` or ``callback``; read when a call is traced.
CALL_ENV = "CRFCORE_JAX_CALL"
CALLS = ("auto", "ffi", "callback")

_warned = False  # that JAX's GPU arrays go through the host


def _call_kind():
    value = os.environ.get(CALL_ENV, "auto").strip().lower() or "auto"
    if value not in CALLS:
        raise ValueError(f"the environment variable {CALL_ENV}={os.environ[CALL_ENV]!r} must be one of {CALLS}")
    if value != "auto":
        return value
    if jax.default_backend() != "gpu":
        return "callback"
    global _warned
    why = cuda_unavailable()
    if why and not _warned:
        _warned = True
        warnings.warn(f"crfcore computes on the CPU: JAX's GPU arrays are copied to the host and back ({why})",
                      RuntimeWarning, stacklevel=5)
    return "callback" if why else "ffi"


def _width(t):
    """A width as the core takes it: a float, or one value per axis or channel."""
    return float(t) if np.ndim(t) == 0 else tuple(float(x) for x in np.asarray(t).ravel())


def _kwargs(ws, wb, mu, ta, tb, tg, n_iter, normalization, spatial_dims):
    return dict(n_iter=n_iter, theta_alpha=_width(ta), theta_beta=_width(tb), theta_gamma=_width(tg),
                w_spatial=np.asarray(ws, np.float64) if np.ndim(ws) else float(ws),
                w_bilateral=np.asarray(wb, np.float64) if np.ndim(wb) else float(wb),
                compat=np.asarray(mu, np.float64), normalization=normalization, spatial_dims=spatial_dims,
                output="logits")


def _host_forward(static, keep, logits, image, ws, wb, mu, ta, tb, tg):
    out, res = meanfield_fwd(np.asarray(logits), np.asarray(image), keep_residuals=keep,
                             **_kwargs(ws, wb, mu, ta, tb, tg, *static))
    handle = _STORE.put(res) if keep else 0
    return out.astype(np.asarray(logits).dtype, copy=False), np.int32(handle)


def _host_backward(static, features, handle, g, logits, image, ws, wb, mu, ta, tb, tg):
    res = _STORE.pop(int(handle)) if int(handle) > 0 else None
    if res is None:  # evicted (or never kept): recompute the forward
        _, res = meanfield_fwd(np.asarray(logits), np.asarray(image), **_kwargs(ws, wb, mu, ta, tb, tg, *static))
    grads = meanfield_bwd(res, np.asarray(g), features=features)
    dt = np.asarray(logits).dtype
    if not features:  # neither the image nor a width is differentiated: their cotangents are symbolic zeros
        grads = grads._replace(image=np.zeros(np.shape(image), dt), theta_alpha=np.zeros(np.shape(ta)),
                               theta_beta=np.zeros(np.shape(tb)), theta_gamma=np.zeros(np.shape(tg)))
    return (grads.logits.astype(dt, copy=False), np.asarray(grads.image, dt).reshape(np.shape(image)),
            np.asarray(grads.w_spatial, dt), np.asarray(grads.w_bilateral, dt), grads.compat.astype(dt, copy=False),
            *(np.asarray(g, dt).reshape(np.shape(t)) for g, t in ((grads.theta_alpha, ta), (grads.theta_beta, tb),
                                                                  (grads.theta_gamma, tg))))


def _to_buffer(dev, value, buf):
    """A host value into an FFI output buffer on the device."""
    buf.copy_to_device(np.ascontiguousarray(np.asarray(value, dtype=buf.dtype).reshape(buf.shape)),
                       stream=dev.stream())


def _ffi_forward(static, keep, frame):
    logits, image, *params = frame.inputs
    out, handle = frame.outputs
    if frame.platform == "cpu":
        result, h = _host_forward(static, keep, logits, image, *params)
        np.copyto(out, result)
        handle[0] = h
        return
    dev = cuda_backend()
    with dev.on_stream(frame.stream):  # XLA's stream; the handler made the call's GPU Numba's current device
        kw = _kwargs(*(dev.to_host(p) for p in params), *static)
        result, res = meanfield_fwd(logits, image, keep_residuals=keep, device="cuda", **kw)
        dev.copy(result, out)
        _to_buffer(dev, _STORE.put(res) if keep else 0, handle)


def _ffi_backward(static, features, frame):
    handle, g, logits, image, *params = frame.inputs
    outs = frame.outputs
    if frame.platform == "cpu":
        for buf, value in zip(outs, _host_backward(static, features, handle[0], g, logits, image, *params)):
            np.copyto(buf, value)
        return
    dev = cuda_backend()
    with dev.on_stream(frame.stream):
        h = int(dev.to_host(handle)[0])
        res = _STORE.pop(h) if h > 0 else None
        kw = _kwargs(*(dev.to_host(p) for p in params), *static)
        if res is None:  # evicted (or never kept): recompute the forward
            _, res = meanfield_fwd(logits, image, device="cuda", **kw)
        grads = meanfield_bwd(res, g, features=features)
        dev.copy(grads.logits, outs[0])
        if features:
            dev.copy(grads.image, outs[1])
        else:
            dev.fill(outs[1], 0)
        values = (grads.w_spatial, grads.w_bilateral, grads.compat) + (
            (grads.theta_alpha, grads.theta_beta, grads.theta_gamma) if features else (0.0, 0.0, 0.0))
        for buf, value in zip(outs[2:], values):
            _to_buffer(dev, value, buf)


def _ffi_name(kind, static, flag):
    """One FFI target per static configuration (the handlers take no attributes)."""
    n_iter, normalization, spatial_dims = static
    return f"crfcore_meanfield_{kind}_{n_iter}_{normalization}_{spatial_dims}_{int(flag)}"


def _forward_call(static, keep, *args):
    logits = args[0]
    if _call_kind() == "ffi":
        name = _ffi_name("fwd", static, keep)
        _xla_ffi.register(name, partial(_ffi_forward, static, keep))
        shapes = (jax.ShapeDtypeStruct(logits.shape, logits.dtype), jax.ShapeDtypeStruct((1,), jnp.int32))
        out, handle = jax.ffi.ffi_call(name, shapes, vmap_method="sequential")(*args)
        return out, handle[0]
    shapes = (jax.ShapeDtypeStruct(logits.shape, logits.dtype), jax.ShapeDtypeStruct((), jnp.int32))
    return jax.pure_callback(partial(_host_forward, static, keep), shapes, *args, vmap_method="sequential")


def _backward_call(static, features, handle, g, *args):
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args)
    if _call_kind() == "ffi":
        name = _ffi_name("bwd", static, features)
        _xla_ffi.register(name, partial(_ffi_backward, static, features))
        return tuple(jax.ffi.ffi_call(name, shapes, vmap_method="sequential")(handle.reshape(1), g, *args))
    return jax.pure_callback(partial(_host_backward, static, features), shapes, handle, g, *args,
                             vmap_method="sequential")


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _refine(static, logits, image, ws, wb, mu, ta, tb, tg):
    return _forward_call(static, False, logits, image, ws, wb, mu, ta, tb, tg)[0]


def _refine_fwd(static, *primals):
    # symbolic zeros: JAX says which inputs are differentiated; the features gradient (image, widths), about as
    # costly as the rest of the backward, is computed only when one of them is
    args = tuple(p.value for p in primals)
    features = any(p.perturbed for p in (primals[1],) + primals[5:])  # the image and the three widths
    out, handle = _forward_call(static, True, *args)
    return out, (handle, features) + args


def _refine_bwd(static, res, g):
    handle, features, *args = res
    if isinstance(g, SymbolicZero):
        g = jnp.zeros(args[0].shape, args[0].dtype)
    return _backward_call(static, features, handle, g, *args)


_refine.defvjp(_refine_fwd, _refine_bwd, symbolic_zeros=True)


def crf_refine(logits, image, *, n_iter=DEFAULTS["n_iter"], theta_alpha=DEFAULTS["theta_alpha"],
               theta_beta=DEFAULTS["theta_beta"], theta_gamma=DEFAULTS["theta_gamma"],
               w_bilateral=DEFAULTS["w_bilateral"], w_spatial=DEFAULTS["w_spatial"], compat=DEFAULTS["compat"],
               normalization=DEFAULTS["normalization"], spatial_dims=DEFAULTS["spatial_dims"]):
    """Refined logits ``Z_T`` of the dense CRF (what ``crfcore.meanfield_fwd(..., output="logits")`` returns).

    Keywords, their order and defaults are :func:`crfcore.meanfield`'s; channels last like the core:
    ``logits (..., *spatial, L)`` and ``image (..., *spatial, C)`` (leading axes are a batch). Differentiable w.r.t. ``logits``, ``image``, the
    widths, the weights (numbers or ``(L, L)``) and ``compat`` (``(L, L)``, Potts ``1 - I`` when None), all as JAX
    arrays; ``n_iter``, ``normalization`` and ``spatial_dims`` are static. The widths may be one value per spatial
    axis (``theta_alpha``, ``theta_gamma``) or per channel (``theta_beta``), as in the core. float32 and float64 are
    computed as they are; bfloat16 and float16 in float32, returned in their dtype. The image is taken in the
    logits' compute dtype. An empty batch gives an empty result.

    Bad values (NaN, a width <= 0) raise a ValueError naming the argument when they are concrete; under
    ``jax.jit`` they are only known inside the host callback, and JAX reports the core's ValueError as the last
    line of a ``JaxRuntimeError``.
    """
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"`logits` must be a float array, got {logits.dtype}")
    given = logits.dtype
    if given not in (jnp.float32, jnp.float64):  # bfloat16, float16: computed in float32, returned in their dtype
        logits = logits.astype(jnp.float32)
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims < 1:
        raise ValueError(f"`spatial_dims` must be an int >= 1, got {spatial_dims!r}")
    if logits.ndim < spatial_dims + 1 or logits.shape[-1] < 2:
        raise ValueError(f"`logits` must have shape (..., *spatial, L) with {spatial_dims} spatial axes and L >= 2, "
                         f"got {logits.shape}")
    image = jnp.asarray(image)
    if not (jnp.issubdtype(image.dtype, jnp.floating) or jnp.issubdtype(image.dtype, jnp.integer)):
        raise TypeError(f"`image` must be a real numeric array, got {image.dtype}")
    image = image.astype(logits.dtype)
    if image.shape == logits.shape[:-1]:
        image = image[..., None]
    check_layout(logits.shape, image.shape, spatial_dims)
    if image.shape[:-1] != logits.shape[:-1]:
        raise ValueError(f"`image` has shape {image.shape} but `logits` has shape {logits.shape}; all axes but the "
                         f"last must match (channels last: (..., *spatial, L) and (..., *spatial, C))")
    check_normalization(normalization)
    n_iter = check_n_iter(n_iter)
    n_lab = logits.shape[-1]
    dt = logits.dtype
    mu = 1.0 - jnp.eye(n_lab, dtype=dt) if compat is None else jnp.asarray(compat, dt)
    ws, wb = jnp.asarray(w_spatial, dt), jnp.asarray(w_bilateral, dt)
    for arr, name in ((ws, "w_spatial"), (wb, "w_bilateral")):
        if arr.shape not in ((), (n_lab, n_lab)):
            raise ValueError(f"`{name}` must be a number or an ({n_lab}, {n_lab}) matrix, got shape {arr.shape}")
    if mu.shape != (n_lab, n_lab):
        raise ValueError(f"`compat` must be None (Potts) or an ({n_lab}, {n_lab}) matrix for {n_lab} labels, got "
                         f"{'a scalar' if mu.ndim == 0 else f'shape {mu.shape}'}")
    sizes = {"theta_alpha": spatial_dims, "theta_beta": image.shape[-1], "theta_gamma": spatial_dims}
    widths = []
    for t, name in zip((theta_alpha, theta_beta, theta_gamma), sizes):
        w = jnp.asarray(t, dt)
        if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != sizes[name]):
            raise ValueError(f"`{name}` must be a number or {sizes[name]} values (one per "
                             f"{'channel' if name == 'theta_beta' else 'spatial axis'}), got shape {w.shape}")
        widths.append(w)
    # concrete values are checked here, where the error can be a ValueError naming the argument; traced ones (under
    # jax.jit) by the core inside the callback: the same message, as the last line of JAX's JaxRuntimeError
    for value, name in ((logits, "logits"), (image, "image"), *zip(widths, sizes)):
        if not isinstance(value, jax.core.Tracer):
            arr = np.asarray(value)
            if name == "logits":  # -inf: an impossible label, as in the core
                check_logits_values(arr, name)
            elif name == "image":
                check_finite(arr, name)
            else:  # a width: the core's check (positive, finite, one value or one per axis or channel)
                kernel_width(arr, name, sizes[name], "image channel" if name == "theta_beta" else "spatial axis")
    if logits.size == 0:  # an empty batch: an empty result (the core refuses empty arrays)
        return jnp.zeros(logits.shape, given)
    static = (int(n_iter), normalization, int(spatial_dims))
    return _refine(static, logits, image, ws, wb, mu, *widths).astype(given)
