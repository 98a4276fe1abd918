"""The internals that :mod:`crfcore.adapters` and the checkout's applications (``unet``, ``benchmarks``) may use.

Not public API (names here may change between releases), but the whole contract between crfcore's engine and its
framework adapters, tools and benchmarks is this one list; nothing outside crfcore imports its private modules
directly.
"""

from ._compat import deprecated
from ._runtime import threads
from ._argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from ._runtime.parallel import run as run_on_compute_thread
from ._validation import check_finite, check_layout, check_logits_values, positive_scalar
from ._kernels import lattice as lattice_kernels
from ._kernels.meanfield import transpose_scaled
from .warmup import compile_workers


def cuda_backend():
    """crfcore's CUDA device module (:mod:`crfcore._cuda.device`: ``require``, ``on_stream``), imported on first
    use (it imports ``numba.cuda``)."""
    from ._cuda import device

    return device


def cuda_unavailable():
    """Why crfcore's CUDA backend cannot run here (numba-cuda missing, no usable GPU), or ``""`` when it can;
    found once per process (by :func:`crfcore._cuda.device.require`)."""
    return cuda_backend().unavailable()


__all__ = ["check_finite", "check_layout", "check_logits_values", "compile_workers", "cuda_backend", "cuda_unavailable",
           "deprecated", "lattice_kernels", "non_negative_float", "non_negative_int", "positive_float", "positive_int",
           "positive_scalar", "run_on_compute_thread", "threads", "transpose_scaled"]
