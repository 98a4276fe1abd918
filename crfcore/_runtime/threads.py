"""Numba's threading layer for crfcore: Intel TBB where its wheel is installed, else Numba's own choice.

Why TBB (measured with ``benchmarks/processes.py``; the figures are in docs/concurrency.md): with Numba's default
layer on Linux, GNU OpenMP, idle threads spin on the cores that another process needs, so two crfcore processes at
once ran far slower than one, and a process forked after crfcore had run was killed ("fork() called from a process
already using GNU OpenMP, this is unsafe"). TBB kept one process's speed, gave two processes together at least one
process's throughput, and forked children work. Numba's ``workqueue`` layer is fork-safe too but about a quarter
slower (it sleeps between kernel launches).

Numba's default search order already puts TBB first; it only fails to find it because the pip wheel puts
``libtbb`` in the environment's ``lib/``, outside the loader's search path ("No threading layer could be loaded"
after ``pip install tbb``). So crfcore loads that library by its path (``tbb`` is a dependency on x86-64) and
leaves the choice to Numba, which takes TBB when it is compatible and falls back as before when not; a
``NUMBA_THREADING_LAYER`` set by the user still decides (and ``tbb`` then loads). Nothing is done once Numba's
threads run in this process.
"""

import ctypes
import os
import sys

import numba

_configured = False
_layer = None

#: File names of the TBB runtime in the ``tbb`` wheel, per platform.
_TBB_NAMES = ("libtbb.so.12", "libtbb.12.dylib", "tbb12.dll")


def _tbb_library():
    """The path of the TBB runtime installed by the ``tbb`` wheel, or None."""
    try:
        from importlib import metadata

        files = metadata.files("tbb") or []
    except Exception:  # not installed, or metadata unreadable
        return None
    for f in files:
        if f.name in _TBB_NAMES:
            path = os.path.realpath(str(f.locate()))
            if os.path.exists(path):
                return path
    candidate = os.path.join(sys.prefix, "lib", "libtbb.so.12")
    return candidate if os.path.exists(candidate) else None


def _started():
    try:
        numba.threading_layer()
    except ValueError:  # "Threading layer is not initialized."
        return False
    return True


def configure():
    """Make TBB loadable before the first parallel kernel runs (idempotent, cheap after the first call).

    Returns the path of the TBB library it loaded, or None where it left everything to Numba.
    """
    global _configured, _layer
    if _configured:
        return _layer
    _configured = True
    if _started():
        return None  # the layer is chosen and running
    path = _tbb_library()
    if path is None:
        return None
    try:
        ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
    except OSError:
        return None
    _layer = path
    return _layer


def layer():
    """The threading layer in use (``numba.threading_layer()``), or None before the first parallel kernel."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None
