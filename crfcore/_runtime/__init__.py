"""crfcore's runtime: the compute thread that every kernel call runs on (:mod:`~crfcore._runtime.parallel`:
cancellation, fork safety, no oversubscription) and Numba's threading layer (:mod:`~crfcore._runtime.threads`).

Nothing here is public API; what the adapters and the checkout's applications may use is in :mod:`crfcore._shared`.
"""
