"""crfcore's Numba kernels: bare, unchecked, writing in place (the validated wrappers live in the public modules).

:mod:`~crfcore._kernels.lattice` (the permutohedral lattice: build, splat, blur, slice and their gradients),
:mod:`~crfcore._kernels.meanfield` (softmax, the compatibility transform and their backward) and
:mod:`~crfcore._kernels.config` (the compilation options every kernel shares).
"""
