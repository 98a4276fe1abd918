"""A Gaussian kernel of the CRF on the device (lattice + densecrf's normalisation) and its features gradient:
:class:`crfcore._engine.kernel.Kernel` and :class:`~crfcore._engine.kernel.FeatureGrad` on device arrays."""

import numpy as np

from .._kernels import cuda_meanfield as CK
from . import device as dev
from .lattice import CudaLattice

#: The normalisations, as :func:`crfcore._kernels.cuda_meanfield.normalisers` numbers them.
KINDS = {"symmetric": 0, "after": 1, "before": 2, "none": 3}


class CudaKernel:
    """``apply(x) = diag(post) K diag(pre) x`` on the device; ``pre`` and ``post`` are always arrays (ones where
    the normalisation has none: multiplying by one is exact)."""

    def __init__(self, features, normalization, dtype):
        self.lattice = lat = CudaLattice(features, dtype)
        self.kind = KINDS[normalization]
        n = lat.num_points
        norm = dev.empty((n, 1), dtype)
        ones = lat.ones(dtype)
        lat.apply(lat.ones(dtype, 1), norm, pre=ones, post=ones)
        self.pre, self.post = dev.empty(n, dtype), dev.empty(n, dtype)
        dev.launch(CK.normalisers, n, norm, self.kind, self.pre, self.post)

    def apply(self, x, out, transpose=False, scale=1.0, accumulate=False):
        pre, post = (self.post, self.pre) if transpose else (self.pre, self.post)
        return self.lattice.apply(x, out, pre=pre, post=post, transpose=transpose, scale=scale, accumulate=accumulate)


class CudaFeatureGrad:
    """The gradient w.r.t. a :class:`CudaKernel`'s features, accumulated over a backward pass (see
    :class:`crfcore._engine.kernel.FeatureGrad`, whose steps it repeats)."""

    def __init__(self, kernel):
        self.kernel = kernel
        lat = kernel.lattice
        self.grad_w = dev.zeros(lat.num_points * (lat.dim + 1), np.float64)
        self.dot_post = dev.zeros(lat.num_points, np.float64)  # sum_t <dS_t, S_t>
        self.dot_pre = dev.zeros(lat.num_points, np.float64)  # sum_t <Q_t, dQ_t>

    def add_message(self, q, s, ds, dq, blurred):
        """One message's share, right after ``blurred = kernel.apply(ds, dq, transpose=True)``."""
        k = self.kernel
        lat = k.lattice
        n = lat.num_points
        lat.slice_grad(blurred, q, k.pre, -1.0, self.grad_w)  # through the splat: K^T's blurred values
        if k.kind in (0, 1):
            dev.launch(CK.row_dots, n, ds, s, self.dot_post)
        if k.kind in (0, 2):
            dev.launch(CK.row_dots, n, q, dq, self.dot_pre)
        buf = lat.splat_blur(q, k.pre, False)
        lat.slice_grad(buf, ds, k.post, -1.0, self.grad_w)  # through the slice: K's blurred values

    def result(self, features):
        """``dl/dfeatures`` ``(N, d)`` float64 on the device; ``features`` are those the lattice was built from."""
        k = self.kernel
        lat = k.lattice
        if k.kind != 3:  # the normalisation D = K 1
            dtype = lat.weights.dtype
            dnorm = dev.empty((lat.num_points, 1), dtype)
            dev.launch(CK.norm_grad, lat.num_points, k.pre, k.post, self.dot_pre, self.dot_post, k.kind, dnorm)
            ones = lat.ones(dtype)
            lat.weights_grad(lat.ones(dtype, 1), dnorm, self.grad_w, pre=ones, post=ones)
        return lat.features_grad_from(self.grad_w, features)
