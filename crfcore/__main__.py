"""``python -m crfcore``: the same as the ``crfcore`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
