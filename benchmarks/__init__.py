"""Benchmark CLI: crfcore against its peers side by side (``python -m benchmarks``)."""

import os

# The timings are the compiled kernels': a cold cache compiles in the process (before the warm-up calls end)
# rather than serving calls from NumPy meanwhile (crfcore.warmup); the first-call figures set their own mode.
os.environ["CRFCORE_FIRST_CALL"] = "compile"
