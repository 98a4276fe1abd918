"""crfcore on NVIDIA GPUs: the lattice, the mean field and its backward on Numba's CUDA target (``numba-cuda``).

What ``device="cuda"`` runs (:func:`crfcore.meanfield` and its forward / backward). Imported only then: a CPU
user never imports ``numba.cuda``. Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run on the CPU in Numba's
CUDA simulator (slowly: for tests on small inputs).

* :mod:`~crfcore._cuda.device`: availability, the stream, launches, arrays in and out;
* :mod:`~crfcore._cuda.lattice`: the permutohedral lattice on the device;
* :mod:`~crfcore._cuda.kernel`: a Gaussian kernel (lattice + normalisation) and its features gradient;
* :mod:`~crfcore._cuda.meanfield`: the iterations, forward and backward.
"""
