"""JAX adapter: ``crf_refine``, the dense CRF's mean field as a differentiable JAX function on crfcore's core.

``jax.custom_vjp`` over ``jax.pure_callback``: the forward runs :func:`crfcore.meanfield_fwd` on the host and leaves its
residuals (lattices and iterates) in a bounded store under an integer handle; the backward runs the core's exact
:func:`crfcore.meanfield_bwd` on them (recomputing the forward if they were evicted). It works under ``jax.jit``,
``jax.grad`` and ``jax.vmap`` (the callbacks then run once per batch element), on the CPU.
"""

from functools import partial

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    from jax.custom_derivatives import SymbolicZero
except ImportError as exc:  # the framework is an extra: say which
    raise ImportError(f"{__name__} needs JAX: pip install 'crfcore[jax]' ({exc})") from exc

from crfcore import meanfield_bwd, meanfield_fwd
from crfcore._shared import ResidualStore
from crfcore.params import NORMALIZATIONS

__all__ = ["crf_refine"]

_STORE = ResidualStore()


def _kwargs(ws, wb, mu, ta, tb, tg, n_iter, normalization, spatial_dims):
    return dict(n_iter=n_iter, theta_alpha=float(ta), theta_beta=float(tb), theta_gamma=float(tg),
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
        grads = grads._replace(image=np.zeros(np.shape(image), dt), theta_alpha=0.0, theta_beta=0.0, theta_gamma=0.0)
    return (grads.logits.astype(dt, copy=False), np.asarray(grads.image, dt).reshape(np.shape(image)),
            np.asarray(grads.w_spatial, dt), np.asarray(grads.w_bilateral, dt), grads.compat.astype(dt, copy=False),
            np.asarray(grads.theta_alpha, dt), np.asarray(grads.theta_beta, dt), np.asarray(grads.theta_gamma, dt))


def _forward_call(static, keep, *args):
    logits = args[0]
    shapes = (jax.ShapeDtypeStruct(logits.shape, logits.dtype), jax.ShapeDtypeStruct((), jnp.int32))
    return jax.pure_callback(partial(_host_forward, static, keep), shapes, *args, vmap_method="sequential")


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
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args)
    return jax.pure_callback(partial(_host_backward, static, features), shapes, handle, g, *args,
                             vmap_method="sequential")


_refine.defvjp(_refine_fwd, _refine_bwd, symbolic_zeros=True)


def crf_refine(logits, image, *, n_iter=5, theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0, w_bilateral=10.0,
               w_spatial=3.0, compat=None, normalization="symmetric", spatial_dims=2):
    """Refined logits ``Z_T`` of the dense CRF (what ``crfcore.meanfield_fwd(..., output="logits")`` returns).

    Keywords, their order and defaults are :func:`crfcore.meanfield`'s; channels last like the core: ``logits (..., *spatial, L)``
    and ``image (..., *spatial, C)`` (leading axes are a batch). Differentiable w.r.t. ``logits``, ``image``, the
    widths, the weights (numbers or ``(L, L)``) and ``compat`` (``(L, L)``, Potts ``1 - I`` when None), all as JAX
    arrays; ``n_iter``, ``normalization`` and ``spatial_dims`` are static. The image is taken in the logits' dtype.
    """
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"`logits` must be a float array, got {logits.dtype}")
    if logits.ndim < spatial_dims + 1 or logits.shape[-1] < 2:
        raise ValueError(f"`logits` must have shape (..., *spatial, L) with {spatial_dims} spatial axes and L >= 2, "
                         f"got {logits.shape}")
    image = jnp.asarray(image, dtype=logits.dtype)
    if image.shape == logits.shape[:-1]:
        image = image[..., None]
    if image.shape[:-1] != logits.shape[:-1]:
        raise ValueError(f"`image` has shape {image.shape} but `logits` has shape {logits.shape}; all axes but the "
                         f"last must match")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"`n_iter` must be an int >= 0, got {n_iter!r}")
    n_lab = logits.shape[-1]
    dt = logits.dtype
    mu = 1.0 - jnp.eye(n_lab, dtype=dt) if compat is None else jnp.asarray(compat, dt)
    ws, wb = jnp.asarray(w_spatial, dt), jnp.asarray(w_bilateral, dt)
    for arr, name in ((ws, "w_spatial"), (wb, "w_bilateral"), (mu, "compat")):
        if arr.shape not in ((), (n_lab, n_lab)) or (name == "compat" and arr.shape != (n_lab, n_lab)):
            raise ValueError(f"`{name}` must be {'' if name == 'compat' else 'a number or '}an ({n_lab}, {n_lab}) "
                             f"matrix, got shape {arr.shape}")
    widths = [jnp.asarray(t, dt).reshape(()) for t in (theta_alpha, theta_beta, theta_gamma)]
    # concrete values are checked here, where the error can be a ValueError naming the argument; traced ones by
    # the core inside the callback (the same message, in JAX's runtime error)
    for value, name in ((logits, "logits"), (image, "image"), *zip(widths, ("theta_alpha", "theta_beta",
                                                                              "theta_gamma"))):
        if not isinstance(value, jax.core.Tracer):
            arr = np.asarray(value)
            if not np.isfinite(arr).all():
                raise ValueError(f"`{name}` contains NaN or infinite values")
            if name.startswith("theta") and not arr > 0:
                raise ValueError(f"`{name}` must be a positive finite number, got {float(arr)}")
    static = (int(n_iter), normalization, int(spatial_dims))
    return _refine(static, logits, image, ws, wb, mu, *widths)
