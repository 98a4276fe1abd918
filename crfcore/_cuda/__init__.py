"""crfcore on NVIDIA GPUs: the lattice, the mean field and its backward on Numba's CUDA target (``numba-cuda``).

What ``device="cuda"`` runs (:func:`crfcore.meanfield`, :func:`crfcore.crf` and their forwards and backwards).
Imported only then: a CPU user never imports ``numba.cuda``. Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run
on the CPU in Numba's CUDA simulator (slowly: for tests on small inputs).

* :mod:`~crfcore._cuda.device`: availability, the stream, launches, arrays in and out;
* :mod:`~crfcore._cuda.lattice`: the permutohedral lattice on the device;
* :mod:`~crfcore._cuda.kernel`: a Gaussian kernel (lattice + normalisation) and its features gradient;
* :mod:`~crfcore._cuda.meanfield`: the iterations of meanfield (two kernels from an image), forward and backward;
* :mod:`~crfcore._cuda.crf`: the iterations of a CRF with any list of pairwise terms, forward and backward.
"""
