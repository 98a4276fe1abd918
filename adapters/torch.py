"""PyTorch adapter: ``crf_refine`` (a ``torch.library`` custom op with crfcore's exact backward) and ``CrfRnn``, a
drop-in for crfasrnn_pytorch's module that takes any batch size.

PyTorch layout: channels first, ``logits (B, L, *spatial)`` and ``image (B, C, *spatial)``, 2-D or 3-D, float32 or
float64. The forward and the backward are two custom ops (``crfcore::meanfield`` and ``crfcore::meanfield_backward``)
with fake (meta) implementations, so ``torch.compile`` traces around them; the forward's residuals (lattices and
iterates) wait in a bounded store for the backward, which recomputes them if they were evicted.

CUDA tensors stay on their GPU: with ``crfcore[cuda]`` installed the CRF runs there (``device="cuda"`` of the core,
on PyTorch's current stream, zero-copy through ``__cuda_array_interface__``); without it they are computed on the
CPU and returned on their device, with a warning the first time.
"""

import warnings

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # the framework is an extra: say which
    raise ImportError(f"{__name__} needs PyTorch: pip install 'crfcore[torch]' ({exc})") from exc

from crfcore import meanfield_bwd, meanfield_fwd
from crfcore._shared import (check_layout, cuda_backend, cuda_unavailable, deprecated,
                             run_on_compute_thread, transpose_scaled)
from crfcore.params import DEFAULTS, check_n_iter, check_normalization, kernel_width
from ._residuals import ResidualStore

__all__ = ["crf_refine", "CrfRnn", "DenseCRFParams"]

_STORE = ResidualStore()
_warned_device = False


def _on_gpu(t):
    """Whether the CRF of a tensor runs on its GPU (a CUDA tensor, and crfcore's CUDA backend usable); else it runs
    on the CPU, with a warning saying why the first time."""
    return t.device.type == "cuda" and not cuda_unavailable()


def _to_numpy(t, quiet=False):
    global _warned_device
    if t.device.type != "cpu" and not _warned_device and not quiet:
        _warned_device = True
        why = f" ({cuda_unavailable()})" if t.device.type == "cuda" and cuda_unavailable() else ""
        warnings.warn(f"crfcore computes on the CPU: {t.device.type} tensors are copied to the CPU and the results "
                      f"back to {t.device}{why}", RuntimeWarning, stacklevel=4)
    return t.detach().cpu().numpy()


class _OnGpu:
    """The tensor's GPU as Numba's current device, and PyTorch's current stream as crfcore's (so the kernels order
    with PyTorch's work on it)."""

    def __init__(self, t):
        self.index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        self.handle = torch.cuda.current_stream(t.device).cuda_stream

    def __enter__(self):
        self.gpu = cuda_backend().require().gpus[self.index]
        self.gpu.__enter__()
        self.stream = cuda_backend().on_stream(self.handle)
        self.stream.__enter__()

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.gpu.__exit__(*exc)


def _gpu_last(t):
    """A CUDA tensor channels last and contiguous, on its device (what the core's device="cuda" takes)."""
    return t.detach().movedim(1, -1).contiguous()


def _gpu_first(a, like):
    """A core device array (channels last) as a contiguous channels-first tensor on ``like``'s device."""
    return torch.as_tensor(a, device=like.device).movedim(-1, 1).to(like.dtype).contiguous()


#: Elements from which the blocked parallel transpose beats NumPy's strided copy (measured on 2 cores).
_BLOCKED_TRANSPOSE_MIN = 1 << 20


def _swap_batch(a, out):
    for i in range(a.shape[0]):
        transpose_scaled(a[i], a.dtype.type(1), out[i])


def _swap_last_two(a):
    """``(B, X, Y)`` -> ``(B, Y, X)`` C-contiguous: by NumPy when small, else by crfcore's blocked parallel
    transpose on its compute thread (a strided NumPy copy of a (4, 21, 512 * 512) array costs a tenth of a CRF's
    forward and backward; below a few MB, NumPy's copy is cheaper than a hand-over to the compute thread)."""
    a = np.ascontiguousarray(a)
    if a.size < _BLOCKED_TRANSPOSE_MIN or a.dtype not in (np.float32, np.float64):
        return np.ascontiguousarray(np.swapaxes(a, 1, 2))
    out = np.empty((a.shape[0], a.shape[2], a.shape[1]), a.dtype)
    run_on_compute_thread(_swap_batch, a, out)
    return out


def _channels_last(t):
    a = _to_numpy(t)
    b, c = a.shape[:2]
    return _swap_last_two(a.reshape(b, c, -1)).reshape((b,) + a.shape[2:] + (c,))


def _channels_first(a, like):
    b, c = a.shape[0], a.shape[-1]
    out = _swap_last_two(a.reshape(b, -1, c)).reshape((b, c) + a.shape[1:-1])
    # always contiguous, whatever the strides of ``like`` (the fake implementations promise contiguous outputs)
    return torch.from_numpy(out).to(device=like.device, dtype=like.dtype).contiguous()


def _fresh(t):
    """A contiguous tensor of ``t``'s shape, dtype and device (``empty_like`` would copy its strides)."""
    return t.new_empty(t.shape)


#: Bits of the ops' ``per_axis``: which widths come one per spatial axis (theta_alpha, theta_gamma) or per channel
#: (theta_beta) in the flat ``widths`` tensor, the others one number each (as the user gave them to the core).
_PER_AXIS = {"theta_alpha": 1, "theta_beta": 2, "theta_gamma": 4}


def _split_widths(widths, per_axis, spatial_dims, n_channels):
    """theta_alpha, theta_beta and theta_gamma from the ops' flat ``widths``: floats, or arrays where ``per_axis``
    says."""
    out, k = [], 0
    for name, n in (("theta_alpha", spatial_dims), ("theta_beta", n_channels), ("theta_gamma", spatial_dims)):
        if per_axis & _PER_AXIS[name]:
            out.append(widths[k:k + n])
            k += n
        else:
            out.append(float(widths[k]))
            k += 1
    return out


def _core_kwargs(ws, wb, mu, widths, per_axis, n_iter, normalization, logits, image, quiet=False):
    spatial_dims = logits.dim() - 2
    ta, tb, tg = _split_widths(np.asarray(_to_numpy(widths, quiet), np.float64), per_axis, spatial_dims,
                               image.shape[1])
    return dict(n_iter=n_iter, theta_alpha=ta, theta_beta=tb, theta_gamma=tg, w_spatial=_to_numpy(ws, quiet),
                w_bilateral=_to_numpy(wb, quiet), compat=_to_numpy(mu, quiet), normalization=normalization,
                spatial_dims=spatial_dims, output="logits")


@torch.library.custom_op("crfcore::meanfield", mutates_args=())
def _meanfield_op(logits: torch.Tensor, image: torch.Tensor, ws: torch.Tensor, wb: torch.Tensor, mu: torch.Tensor,
                  widths: torch.Tensor, n_iter: int, normalization: str, keep: bool,
                  per_axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape[0] == 0:  # an empty batch: an empty result (the core refuses empty arrays)
        return _fresh(logits), torch.tensor(0, dtype=torch.int64)
    gpu = _on_gpu(logits)
    kw = _core_kwargs(ws, wb, mu, widths, per_axis, n_iter, normalization, logits, image, quiet=gpu)
    if gpu:  # the parameters above are a few numbers; the images never leave the GPU
        with _OnGpu(logits):
            out, res = meanfield_fwd(_gpu_last(logits), _gpu_last(image), keep_residuals=keep, device="cuda", **kw)
            out = _gpu_first(out, logits)
    else:
        out, res = meanfield_fwd(_channels_last(logits), _channels_last(image), keep_residuals=keep, **kw)
        out = _channels_first(out, logits)
    handle = _STORE.put(res) if keep else 0
    return out, torch.tensor(handle, dtype=torch.int64)


@_meanfield_op.register_fake
def _(logits, image, ws, wb, mu, widths, n_iter, normalization, keep, per_axis=0):
    # the handle is a host number wherever the images are (the real op's is a CPU tensor on a GPU too)
    return _fresh(logits), logits.new_empty((), dtype=torch.int64, device="cpu")


@torch.library.custom_op("crfcore::meanfield_backward", mutates_args=())
def _meanfield_backward_op(handle: torch.Tensor, grad: torch.Tensor, logits: torch.Tensor, image: torch.Tensor,
                           ws: torch.Tensor, wb: torch.Tensor, mu: torch.Tensor, widths: torch.Tensor, n_iter: int,
                           normalization: str, features: bool, per_axis: int = 0) -> list[torch.Tensor]:
    if logits.shape[0] == 0:  # an empty batch: no gradient flows
        return [_fresh(t).zero_() for t in (logits, ws, wb, mu, image, widths)]
    gpu = _on_gpu(logits)
    kw = _core_kwargs(ws, wb, mu, widths, per_axis, n_iter, normalization, logits, image, quiet=gpu)
    res = _STORE.pop(int(handle)) if int(handle) > 0 else None
    if gpu:
        return _gpu_backward(res, grad, logits, image, ws, mu, widths, features, kw)
    if res is None:  # evicted, or the forward kept nothing: recompute it
        _, res = meanfield_fwd(_channels_last(logits), _channels_last(image), **kw)
    g = meanfield_bwd(res, _channels_last(grad), features=features)
    dtype = logits.dtype
    out = [_channels_first(g.logits, logits)]
    out += [torch.as_tensor(np.asarray(x), dtype=dtype).to(ws.device).contiguous() for x in (g.w_spatial, g.w_bilateral)]
    out.append(torch.as_tensor(g.compat, dtype=dtype).to(mu.device).contiguous())
    if features:
        out.append(_channels_first(np.asarray(g.image).reshape(np.moveaxis(_to_numpy(image), 1, -1).shape), image))
        out.append(_widths_grad(g, widths))
    else:
        out += [_fresh(image).zero_(), _fresh(widths).zero_()]
    return out


def _widths_grad(g, widths):
    """The core's width gradients (one per axis and per channel, as the op passed them) as the flat ``widths``."""
    flat = np.concatenate([np.ravel(g.theta_alpha), np.ravel(g.theta_beta), np.ravel(g.theta_gamma)])
    return torch.as_tensor(flat, dtype=widths.dtype).to(widths.device)


def _gpu_backward(res, grad, logits, image, ws, mu, widths, features, kw):
    """The backward op's gradients for CUDA tensors, computed on their GPU."""
    with _OnGpu(logits):
        if res is None:
            _, res = meanfield_fwd(_gpu_last(logits), _gpu_last(image), device="cuda", **kw)
        g = meanfield_bwd(res, _gpu_last(grad), features=features)
        dtype = logits.dtype
        out = [_gpu_first(g.logits, logits)]
        out += [torch.as_tensor(np.asarray(x), dtype=dtype).to(ws.device).contiguous()
                for x in (g.w_spatial, g.w_bilateral)]
        out.append(torch.as_tensor(g.compat, dtype=dtype).to(mu.device).contiguous())
        if features:
            out.append(_gpu_first(g.image, image))
            out.append(_widths_grad(g, widths))
        else:
            out += [_fresh(image).zero_(), _fresh(widths).zero_()]
    return out


@_meanfield_backward_op.register_fake
def _(handle, grad, logits, image, ws, wb, mu, widths, n_iter, normalization, features, per_axis=0):
    return [_fresh(t) for t in (logits, ws, wb, mu, image, widths)]


class _Release:
    """Drops a forward's residuals from the store when its autograd graph is freed without a backward (a forward
    under grad mode whose output is discarded: gradcheck's probes, an evaluation forgotten under no_grad)."""

    def __init__(self, handle):
        self.handle = handle

    def __del__(self):
        if self.handle > 0:
            _STORE.pop(self.handle)


def _setup_context(ctx, inputs, output):
    logits, image, ws, wb, mu, widths, n_iter, normalization, keep, per_axis = inputs
    ctx.save_for_backward(output[1], logits, image, ws, wb, mu, widths)
    if keep and not torch.compiler.is_compiling():
        ctx.release = _Release(int(output[1]))
    ctx.n_iter, ctx.normalization, ctx.per_axis = n_iter, normalization, per_axis
    ctx.features = bool(ctx.needs_input_grad[1] or ctx.needs_input_grad[5])


def _backward(ctx, grad_out, grad_handle):
    handle, logits, image, ws, wb, mu, widths = ctx.saved_tensors
    grads = _meanfield_backward_op(handle, grad_out, logits, image, ws, wb, mu, widths, ctx.n_iter,
                                   ctx.normalization, ctx.features, ctx.per_axis)
    d_logits, d_ws, d_wb, d_mu, d_image, d_widths = grads
    return (d_logits, d_image if ctx.features else None, d_ws, d_wb, d_mu, d_widths if ctx.features else None,
            None, None, None, None)


_meanfield_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(logits, image, spatial_dims):
    if not isinstance(logits, torch.Tensor) or not isinstance(image, torch.Tensor):
        raise TypeError(f"`logits` and `image` must be torch tensors, got {type(logits).__name__} and "
                        f"{type(image).__name__}")
    if logits.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"`logits` must be float32 or float64, got {logits.dtype}")
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"`spatial_dims` must be 2 or 3, got {spatial_dims!r}")
    if logits.dim() == 5 and spatial_dims == 2:  # 0.1 took the spatial axes from the rank
        deprecated("crf_refine on (B, L, D, H, W) logits without spatial_dims", "crf_refine(..., spatial_dims=3)",
                   stacklevel=4)
        spatial_dims = 3
    if logits.dim() != spatial_dims + 2:
        raise ValueError(f"`logits` must be (B, L, *spatial) with {spatial_dims} spatial axes (channels first: "
                         f"{'(B, L, H, W)' if spatial_dims == 2 else '(B, L, D, H, W)'}), got shape "
                         f"{tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"`logits` has {logits.shape[1]} label(s) on axis 1; a CRF needs L >= 2 (channels first: "
                         f"(B, L, *spatial))")
    if image.dim() == logits.dim() - 1:
        image = image.unsqueeze(1)  # (B, *spatial): one channel
    check_layout(logits.shape, image.shape, spatial_dims, channels="first")
    if image.dim() != logits.dim() or image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
        raise ValueError(f"`image` has shape {tuple(image.shape)} but `logits` has shape {tuple(logits.shape)}; "
                         f"they must match in batch and spatial axes (channels first: image (B, C, *spatial))")
    return image.to(logits.dtype), spatial_dims  # values (NaN, infinite): the core checks them, naming them


def _as_tensor(x, like, name, dtype=None):
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    return t.to(device=like.device, dtype=dtype or like.dtype)


def crf_refine(logits, image, *, n_iter=DEFAULTS["n_iter"], theta_alpha=DEFAULTS["theta_alpha"],
               theta_beta=DEFAULTS["theta_beta"], theta_gamma=DEFAULTS["theta_gamma"],
               w_bilateral=DEFAULTS["w_bilateral"], w_spatial=DEFAULTS["w_spatial"], compat=DEFAULTS["compat"],
               normalization=DEFAULTS["normalization"], spatial_dims=DEFAULTS["spatial_dims"]):
    """Refined logits of a batch: the dense CRF's unrolled mean field, differentiable (exactly) w.r.t. everything.

    Keywords, their order and defaults are :func:`crfcore.meanfield`'s; the layout is PyTorch's, channels first.

    Parameters
    ----------
    logits : torch.Tensor, (B, L, H, W) or (B, L, D, H, W)
        Unnormalised class scores, channels first; float32 or float64.
    image : torch.Tensor, ``(B, C, *spatial)``
        The guidance image in its own units (``theta_beta`` is in them); receives a gradient.
    n_iter, normalization
        As in :func:`crfcore.meanfield`.
    theta_alpha, theta_beta, theta_gamma : float, sequence or tensor
        Kernel widths: one, or one per spatial axis (``theta_alpha``, ``theta_gamma``, in axis order) or per channel
        (``theta_beta``), as :func:`crfcore.meanfield` takes them; tensors receive gradients of their shape (keep
        them positive, e.g. as ``exp`` of a parameter).
    w_bilateral, w_spatial : float, or (L, L) tensor
    compat : (L, L) tensor or None (Potts ``1 - I``)
    spatial_dims : {2, 3}
        2 for images ``(B, L, H, W)``, 3 for volumes ``(B, L, D, H, W)``.

    Returns
    -------
    torch.Tensor
        ``Z_T`` with the shape, dtype and device of ``logits`` (what ``crfcore.meanfield_fwd(..., output="logits")``
        returns, channels first).
    """
    image, spatial_dims = _check_inputs(logits, image, spatial_dims)
    check_normalization(normalization)
    n_iter = check_n_iter(n_iter)
    n_lab = logits.shape[1]
    eye = torch.eye(n_lab, dtype=logits.dtype, device=logits.device)
    mats = []
    for value, name in ((w_spatial, "w_spatial"), (w_bilateral, "w_bilateral")):
        t = _as_tensor(value, logits, name)
        if t.dim() == 0:
            t = t * eye
        if t.shape != (n_lab, n_lab):
            raise ValueError(f"`{name}` must be a number or an ({n_lab}, {n_lab}) matrix, got shape {tuple(t.shape)}")
        mats.append(t)
    mu = 1 - eye if compat is None else _as_tensor(compat, logits, "compat")
    if mu.shape != (n_lab, n_lab):
        raise ValueError(f"`compat` must be None (Potts) or an ({n_lab}, {n_lab}) matrix for {n_lab} labels, got "
                         f"{'a scalar' if mu.dim() == 0 else f'shape {tuple(mu.shape)}'}")
    widths, per_axis = [], 0  # the ops take them flat; the core checks their values and names bad ones
    for value, name in ((theta_alpha, "theta_alpha"), (theta_beta, "theta_beta"), (theta_gamma, "theta_gamma")):
        # float64 whatever the logits' dtype: a float32 width would move the kernels by 1e-7
        t = _as_tensor(value, logits, name, torch.float64)
        n = image.shape[1] if name == "theta_beta" else spatial_dims
        if t.dim() != 0:
            if t.shape != (n,):
                what = "channel" if name == "theta_beta" else "spatial axis"
                raise ValueError(f"`{name}` must be a number or one per {what} ({n}), got shape {tuple(t.shape)}")
            per_axis |= _PER_AXIS[name]
        widths.append(t.reshape(-1))
    widths = torch.cat(widths)
    needs = torch.is_grad_enabled() and any(t.requires_grad for t in (logits, image, *mats, mu, widths))
    out, _ = _meanfield_op(logits, image, mats[0], mats[1], mu, widths, int(n_iter), normalization, bool(needs),
                           per_axis)
    return out


class DenseCRFParams:
    """crfasrnn_pytorch's initial CRF parameters: ``alpha``, ``beta``, ``gamma`` (the widths theta_alpha,
    theta_beta, theta_gamma) and the kernel weights ``spatial_ker_weight``, ``bilateral_ker_weight``."""

    def __init__(self, alpha=160.0, beta=3.0, gamma=3.0, spatial_ker_weight=3.0, bilateral_ker_weight=5.0):
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.spatial_ker_weight, self.bilateral_ker_weight = spatial_ker_weight, bilateral_ker_weight


class CrfRnn(nn.Module):
    """CRF as RNN (Zheng et al. 2015) for PyTorch: a drop-in for crfasrnn_pytorch's ``CrfRnn`` with any batch size.

    ``forward(image, logits)`` in crfasrnn_pytorch's argument order: ``image (B, C, *spatial)`` and
    ``logits (B, L, *spatial)``, returning refined logits ``(B, L, *spatial)``. The three ``(L, L)`` matrices are
    parameters named as theirs. Their update is ``Z = U + mu (W_s K_s Q + W_b K_b Q)`` with ``mu`` initialised to
    ``I``; ours is crfcore's and our Keras layer's ``Z = U - mu (W_s K_s Q + W_b K_b Q)`` with ``mu = 1 - I`` (Potts):
    the opposite sign and a matrix that differs by a constant per pixel, so both start from the same probabilities.
    Kernels are normalised "after" (``D^-1 K``) as theirs.

    Parameters
    ----------
    num_labels : int
    num_iterations : int, default 5
    crf_init_params : object, optional
        Anything with crfasrnn_pytorch's ``DenseCRFParams`` fields (:class:`DenseCRFParams` by default).
    theta_alpha, theta_beta, theta_gamma, spatial_weight, bilateral_weight : float, optional
        Override ``crf_init_params`` (``alpha``, ``beta``, ``gamma``, ``spatial_ker_weight``,
        ``bilateral_ker_weight``).
    normalization : str, default "after"
    trainable_widths : bool, default False
        Learn the widths too (parameters ``log_theta_alpha``, ... : logarithms, so they stay positive); the
        gradient then also reaches the image.
    """

    def __init__(self, num_labels, num_iterations=5, crf_init_params=None, *, theta_alpha=None, theta_beta=None,
                 theta_gamma=None, spatial_weight=None, bilateral_weight=None, normalization="after",
                 trainable_widths=False):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"`num_labels` must be an int >= 2, got {num_labels!r}")
        check_n_iter(num_iterations, "num_iterations")
        check_normalization(normalization)
        p = crf_init_params if crf_init_params is not None else DenseCRFParams()

        def pick(value, field):
            v = getattr(p, field) if value is None else value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"`{field}` must be a number, got {v!r}")
            return float(v)

        widths = {"theta_alpha": pick(theta_alpha, "alpha"), "theta_beta": pick(theta_beta, "beta"),
                  "theta_gamma": pick(theta_gamma, "gamma")}
        for name, value in widths.items():
            kernel_width(value, name, 1, "")
        self.num_labels, self.num_iterations, self.normalization = num_labels, num_iterations, normalization
        self.trainable_widths = bool(trainable_widths)
        eye = torch.eye(num_labels, dtype=torch.float32)
        self.spatial_ker_weights = nn.Parameter(pick(spatial_weight, "spatial_ker_weight") * eye)
        self.bilateral_ker_weights = nn.Parameter(pick(bilateral_weight, "bilateral_ker_weight") * eye)
        self.compatibility_matrix = nn.Parameter(1 - eye)
        for name, value in widths.items():
            log = torch.tensor(np.log(value), dtype=torch.float32)
            if self.trainable_widths:
                setattr(self, f"log_{name}", nn.Parameter(log))
            else:
                self.register_buffer(f"log_{name}", log)

    def widths(self):
        """The current widths as floats."""
        return {name: float(torch.exp(getattr(self, f"log_{name}").detach())) for name in ("theta_alpha", "theta_beta",
                                                                                          "theta_gamma")}

    def forward(self, image, logits):
        if isinstance(logits, torch.Tensor) and logits.dim() >= 2 and logits.shape[1] != self.num_labels:
            raise ValueError(f"CrfRnn(num_labels={self.num_labels}) got logits with {logits.shape[1]} labels on axis "
                             f"1 (shape {tuple(logits.shape)}; channels first, (B, L, *spatial))")
        dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
        cast = {k: getattr(self, k).to(dtype) for k in ("spatial_ker_weights", "bilateral_ker_weights",
                                                         "compatibility_matrix")}
        widths = [torch.exp(getattr(self, f"log_{n}").to(dtype)) for n in ("theta_alpha", "theta_beta",
                                                                             "theta_gamma")]
        return crf_refine(logits.to(dtype), image, n_iter=self.num_iterations, theta_alpha=widths[0],
                          theta_beta=widths[1], theta_gamma=widths[2], w_spatial=cast["spatial_ker_weights"],
                          w_bilateral=cast["bilateral_ker_weights"], compat=cast["compatibility_matrix"],
                          normalization=self.normalization, spatial_dims=logits.dim() - 2)

    def extra_repr(self):
        w = ", ".join(f"{k}={v:.4g}" for k, v in self.widths().items())
        return (f"num_labels={self.num_labels}, num_iterations={self.num_iterations}, {w}, "
                f"normalization={self.normalization!r}, trainable_widths={self.trainable_widths}")
