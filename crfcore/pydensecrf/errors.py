"""The drop-in's error classes: a clear message, and a class that the ``except`` clauses written for pydensecrf
still catch.

pydensecrf raises whatever its Cython buffers, NumPy indexing or ``assert`` raise for a bad argument (a
``ValueError`` for a float image, an ``IndexError`` for a label out of range, an ``AssertionError`` for a
probability of 1). crfcore names the argument and says what to do, with a class deriving from both its own
(``TypeError``/``ValueError``) and pydensecrf's.
"""

__all__ = ["ArgumentTypeError", "LabelRangeError", "LabelTypeError", "LengthError", "RangeError", "LabelCountError"]


class ArgumentTypeError(TypeError, ValueError):
    """A wrong type where pydensecrf raised ``ValueError`` ("Buffer dtype mismatch") or ``TypeError``."""


class LabelRangeError(ValueError, IndexError):
    """A label outside ``0 .. n_labels`` (pydensecrf: an ``IndexError`` from NumPy's indexing)."""


class LabelTypeError(TypeError, IndexError):
    """A label map that is not integral (pydensecrf: an ``IndexError``, "arrays used as indices must be of integer
    type")."""


class LengthError(ValueError, IndexError):
    """Fewer widths than there are dimensions to scale, or more (pydensecrf: an ``IndexError``)."""


class RangeError(ValueError, AssertionError):
    """A probability or scale outside its interval (pydensecrf: an ``AssertionError``, which ``python -O`` drops)."""


class LabelCountError(ValueError, ZeroDivisionError):
    """``n_labels = 1`` in :func:`~crfcore.pydensecrf.utils.unary_from_labels` (pydensecrf: a division by zero)."""
