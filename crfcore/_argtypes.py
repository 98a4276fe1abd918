"""argparse types shared by the command-line tools (``python -m crfcore``, ``python -m unet``, the benchmarks):
bad values are refused when the arguments are parsed, before any work."""

import argparse
import math


def _bounded(name, convert, least, strict, expected, bound):
    """The argparse type ``name``: ``convert(text)``, finite, above ``least`` (``strict``) or at least it;
    ``expected`` and ``bound`` say what was wanted when the text is not a number or the number is out of range."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (value > least if strict else value >= least) or math.isinf(value):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value if convert is int else text}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


#: An integer >= 1.
positive_int = _bounded("positive_int", int, 1, False, "a positive integer", ">= 1")
#: An integer >= 0.
non_negative_int = _bounded("non_negative_int", int, 0, False, "an integer >= 0", ">= 0")
#: A finite number > 0.
positive_float = _bounded("positive_float", float, 0.0, True, "a positive number", "a finite number > 0")
#: A finite number >= 0.
non_negative_float = _bounded("non_negative_float", float, 0.0, False, "a number >= 0", "a finite number >= 0")
