"""Benchmark CLI: crfcore against its peers side by side (``python -m benchmarks``; the checkout's ``make bench``).

Not part of the installed package. Importing it changes nothing: :func:`benchmarks.cli.run` sets the first-call
mode it measures under.
"""
