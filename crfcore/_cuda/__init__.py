"""crfcore on NVIDIA GPUs: the lattice, the mean field and its backward on Numba's CUDA target (``numba-cuda``).

What ``device="cuda"`` runs (:func:`crfcore.meanfield`, :func:`crfcore.crf` and their forwards and backwards).
Imported only then: a CPU user never imports ``numba.cuda``. Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run
on the CPU in Numba's CUDA simulator (slowly: for tests on small inputs).

* :mod:`~crfcore._cuda.device`: availability, the stream, launches, arrays in and out;
* :mod:`~crfcore._cuda.lattice`: the permutohedral lattice on the device;
* :mod:`~crfcore._cuda.kernel`: a Gaussian kernel (lattice + normalisation) and its features gradient;
* :mod:`~crfcore._cuda.inputs`: the checks of device (or host) inputs: logits, images, gradients;
* :mod:`~crfcore._cuda.iterations`: the mean-field iterations over any list of kernels, forward and exact backward
  (the one iteration loop on the device, mirroring :mod:`crfcore._engine.iterations`);
* :mod:`~crfcore._cuda.crf`: a CRF with any list of pairwise terms: its checks, one kernel per term, the iterations;
* :mod:`~crfcore._cuda.meanfield`: meanfield as that CRF with its two standard terms per image (spatial, bilateral
  features made on the device), its gradients turned into the widths' and the image's.
"""
