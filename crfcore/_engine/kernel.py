"""A Gaussian kernel of the CRF: a lattice with densecrf's normalisation, and its features gradient."""

import copy

import numpy as np

from .._kernels import meanfield as MK
from ..lattice import Lattice


class Kernel:
    """A Gaussian kernel on a lattice with its normalisation: ``apply(x) = diag(post) K diag(pre) x``.

    ``normalization`` follows densecrf: ``"symmetric"`` is ``D^-1/2 K D^-1/2``, ``"after"`` is ``D^-1 K``
    (crfasrnn's), ``"before"`` is ``K D^-1`` and ``"none"`` is ``K``, where ``D = diag(K 1)``. The lattice keeps
    its barycentric weights in the compute ``dtype`` and not its features (the backward rebuilds them).
    """

    def __init__(self, features, normalization, dtype):
        self.lattice = Lattice(features, dtype=dtype, keep_features=False)
        self.normalization = normalization
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

    def with_own_workspace(self):
        """A kernel sharing this one's lattice and normalisation (read-only) with scratch buffers of its own: a
        cached kernel that several threads filter with at once (images of a batch on separate threads)."""
        twin = copy.copy(self)
        twin._work = None
        return twin

    def release_workspace(self):
        """Drop the scratch buffers (a kernel kept for later calls should not keep a call's buffers alive)."""
        self._work = None

    def has_workspace(self, n_channels, dtype):
        """Whether the kernel holds scratch buffers for ``n_channels`` channels of ``dtype``."""
        return self._work is not None and self._work[0].shape[1] == n_channels and self._work[0].dtype == dtype

    def workspace(self, n_channels, dtype):
        if not self.has_workspace(n_channels, dtype):
            self._work = self.lattice.workspace(n_channels, dtype)
        return self._work

    def apply(self, x, out, transpose=False, scale=1.0, accumulate=False):
        work = self.workspace(x.shape[1], x.dtype)
        pre, post = (self.post, self.pre) if transpose else (self.pre, self.post)
        return self.lattice.apply(x, out, transpose=transpose, pre=pre, post=post, work=work, scale=scale,
                                  accumulate=accumulate)


def share_workspace(kernels, n_channels, dtype):
    """Give the kernels one set of scratch buffers for ``n_channels`` channels (they filter one after the
    other), sized for the largest lattice: a workspace per kernel would cost ~20 % more memory at 21 labels.

    Kernels that all hold buffers for these channels and dtype keep them: a step-wise loop (densecrf's
    ``stepInference``) calls this once a step, and fresh buffers cost their page faults each time."""
    if all(k.has_workspace(n_channels, dtype) for k in kernels):
        return
    rows = max(k.lattice.arrays.remap.shape[0] for k in kernels)
    verts = max(k.lattice.num_vertices for k in kernels) + 1
    flat = [np.empty(rows * n_channels, dtype), np.empty(verts * n_channels, dtype),
            np.empty(verts * n_channels, dtype)]
    for k in kernels:
        r, m = k.lattice.arrays.remap.shape[0], k.lattice.num_vertices + 1
        k._work = tuple(f[:size * n_channels].reshape(size, n_channels) for f, size in zip(flat, (r, m, m)))


class FeatureGrad:
    """The gradient w.r.t. a :class:`Kernel`'s features, accumulated over the iterations of a backward pass.

    A message ``S = diag(post) K diag(pre) Q`` whose gradient is ``-dS`` (the mean field's sign) contributes,
    through the barycentric weights ``W`` of ``K``, the two passes of :meth:`Lattice.weights_grad`, and through
    the normalisation ``<-dS, S> / post`` and ``<-Q, dQ> / pre`` per pixel (``dQ = diag(pre) K^T diag(post) dS``).
    The normalisation's own dependence on the features (``D = K 1``) is added once, by :meth:`result`, and the
    weights' gradient becomes the features' gradient once too: both are linear in what was accumulated.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        lat = kernel.lattice
        self.grad_w = np.zeros((lat.num_points, lat.dim + 1))
        self.dot_post = np.zeros(lat.num_points) if kernel.post is not None else None  # sum_t <dS_t, S_t>
        self.dot_pre = np.zeros(lat.num_points) if kernel.pre is not None else None  # sum_t <Q_t, dQ_t>

    def add_message(self, q, s, ds, dq):
        """One message's share, called right after ``kernel.apply(ds, dq, transpose=True)`` (whose blurred
        vertex values are still in the kernel's workspace). ``q``: the message's input, ``s`` its output,
        ``ds`` minus its gradient, ``dq`` the transposed filtering of ``ds``."""
        k = self.kernel
        lat = k.lattice
        work = k.workspace(q.shape[1], q.dtype)
        lat.slice_grad(work[0], q, k.pre, -1.0, self.grad_w)  # through the splat: K^T's blurred values
        if self.dot_post is not None:
            MK.row_dots(ds, s, self.dot_post)
        if self.dot_pre is not None:
            MK.row_dots(q, dq, self.dot_pre)
        lat.splat_blur(q, lat.ones(q.dtype) if k.pre is None else k.pre, work, False)
        lat.slice_grad(work[0], ds, k.post, -1.0, self.grad_w)  # through the slice: K's blurred values

    def result(self, features):
        """``dl/dfeatures`` ``(N, d)`` float64; ``features`` are the ones the kernel's lattice was built from."""
        k = self.kernel
        lat = k.lattice
        # d/dpre = -dot_pre / pre and d/dpost = -dot_post / post; pre, post = (D + 1e-20)^(-1/2) or ^-1
        if k.normalization == "symmetric":
            dnorm = 0.5 * k.pre.astype(np.float64) ** 2 * (self.dot_pre + self.dot_post)
        elif k.normalization == "after":
            dnorm = k.post.astype(np.float64) * self.dot_post
        elif k.normalization == "before":
            dnorm = k.pre.astype(np.float64) * self.dot_pre
        else:
            dnorm = None
        if dnorm is not None:  # D = K 1
            dtype = lat.arrays.weights.dtype
            ones = lat.ones(dtype)[:, None]
            lat.weights_grad(ones, dnorm.astype(dtype)[:, None], self.grad_w, work=lat.workspace(1, dtype))
        return lat.features_grad_from(self.grad_w, features)
