"""Benchmark CLI: crfcore against its peers side by side (``python -m benchmarks``)."""
