"""crfcore's engine internals: the mean-field iterations over lattices, the compute thread, the threading layer,
the NumPy fallback lattice, input checks and the residual store for the framework adapters.

Nothing here is public API. What :mod:`crfcore.adapters` and the checkout's applications (``unet``,
``benchmarks``) may use is listed in :mod:`crfcore._shared`.
"""
