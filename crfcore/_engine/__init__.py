"""crfcore's engine: the mean-field iterations over any list of Gaussian kernels, forward and backward
(:mod:`~crfcore._engine.iterations`), and a kernel with its normalisation and features gradient
(:mod:`~crfcore._engine.kernel`).

Nothing here is public API. What :mod:`crfcore.adapters` and the checkout's applications (``unet``,
``benchmarks``) may use is listed in :mod:`crfcore._shared`.
"""
