"""``python -m crfcore._kernels``: regenerate ``signature_table.py`` (see :mod:`crfcore._kernels.signatures`)."""

import sys

from .signatures import record, write

print(f"wrote {write(record())}", file=sys.stderr)
