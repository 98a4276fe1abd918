"""``python -m crfcore.warmup``: regenerate ``signature_table.py`` (see :mod:`crfcore.warmup.signatures`)."""

import sys

from .signatures import record, write

print(f"wrote {write(record())}", file=sys.stderr)
