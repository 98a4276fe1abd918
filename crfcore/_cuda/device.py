"""The CUDA device: whether there is one, the stream kernels run on, launches, and arrays in and out.

Arrays the caller gives on the device (anything with ``__cuda_array_interface__``: CuPy, PyTorch CUDA tensors,
Numba device arrays) are used in place, never copied to the host; NumPy arrays are copied to the device.
"""

import contextlib
import functools
import importlib.util
import os
import threading

import numpy as np

from .._validation import NUMBA_DEVICE_ARRAYS, is_device_array  # noqa: F401 (this room's name for it)

_state = threading.local()
_checked = None


@functools.lru_cache(maxsize=None)
def simulator():
    """Whether Numba's CUDA simulator is on (Numba reads the variable once, when imported: so does this)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def require():
    """Import ``numba.cuda`` and check that kernels can run: a GPU with a working driver, or the simulator. A success
    is remembered for the process; a failure is checked again on the next call (numba-cuda installed or a driver
    back meanwhile).

    Raises
    ------
    ImportError
        If ``numba-cuda`` is not installed.
    RuntimeError
        If there is neither a usable GPU nor the simulator.
    """
    global _checked
    if _checked is None:
        found = _check()
        if isinstance(found, Exception):
            raise found
        _checked = found
    return _checked


_why = None


def unavailable():
    """Why ``device="cuda"`` cannot run here (numba-cuda missing, no usable GPU), or ``""`` when it can: the
    adapters' per-call question, answered once per process."""
    global _why
    if _why is None:
        try:
            require()
            _why = ""
        except (ImportError, RuntimeError) as exc:
            _why = str(exc)
    return _why


def _check():
    """``numba.cuda`` when kernels can run here, else the ImportError or RuntimeError that says why."""
    if importlib.util.find_spec("numba_cuda") is None:
        return ImportError("device='cuda' needs the numba-cuda package: pip install 'crfcore[cuda]' (CUDA 13; "
                           "'numba-cuda[cu12]' for a CUDA 12 driver)")
    from numba import cuda

    if not simulator():
        try:
            ok = cuda.is_available()
        except Exception:  # a broken driver install raises instead of answering
            ok = False
        if not ok:
            return RuntimeError("device='cuda' was asked for but no CUDA GPU is usable here (numba.cuda.is_available() "
                                "is False: no NVIDIA GPU, no driver, or CUDA_VISIBLE_DEVICES hides it); use "
                                "device='cpu', or set NUMBA_ENABLE_CUDASIM=1 before importing numba to run the CUDA "
                                "code in Numba's simulator (slow, for tests)")
    return cuda


#: The simulator's launches: every kernel loops over its elements (grid-stride), so a few threads cover any size,
#: and two blocks of four still run threads side by side and across blocks (each is a Python thread, ~0.3 ms to
#: start: a thread per element made a 30-pixel backward take seconds).
_SIM_GRID = (2, 4)


def grid(n):
    """``(blocks, threads per block)`` of a launch over ``n`` elements: one thread an element in blocks of 256 on a
    GPU, at least 128 blocks (the extra ones exit at once; fewer would make numba-cuda warn of low occupancy at every
    small launch) and at most 2**20 (the kernels loop past that); :data:`_SIM_GRID` in the simulator."""
    if simulator():
        return _SIM_GRID
    return min(max((n + 255) // 256, 128), 1 << 20), 256


def stream():
    """The stream kernels are launched on (0: the default stream, unless :func:`on_stream` says otherwise)."""
    return getattr(_state, "stream", 0)


@contextlib.contextmanager
def on_stream(handle):
    """Launch this thread's kernels on the CUDA stream ``handle`` (a ``cudaStream_t`` as an int, e.g. PyTorch's
    ``torch.cuda.current_stream().cuda_stream``) inside the block, so they order with the framework's work."""
    cuda = require()
    previous = stream()
    _state.stream = cuda.external_stream(handle) if handle and not simulator() else 0
    try:
        yield
    finally:
        _state.stream = previous


def launch(kernel, n, *args):
    """Run ``kernel`` on ``n`` threads (a 1-D grid) with ``args``."""
    if n <= 0:
        return
    blocks, tpb = grid(n)
    kernel[blocks, tpb, stream()](*args)


def empty(shape, dtype):
    """A device array, uninitialised."""
    return require().device_array(shape, dtype=np.dtype(dtype), stream=stream())


def zeros(shape, dtype):
    """A device array of zeros."""
    return full(shape, 0, dtype)


def full(shape, value, dtype):
    """A device array filled with ``value`` on the device (a hash table of 2**24 slots copied from the host would
    cost more than the CRF)."""
    return fill(empty(shape, dtype), value)


def fill(x, value):
    """``x[...] = value`` on the device (``x`` C-contiguous); returns ``x``."""
    from .._kernels.cuda_meanfield import fill as kernel

    if x.size:
        flat = x.reshape(-1)
        launch(kernel, flat.shape[0], flat, np.dtype(x.dtype).type(value))
    return x


def copy(src, dst):
    """``dst[...] = src`` on the device, for C-contiguous arrays of one shape and any dtype (as bytes)."""
    from .._kernels.cuda_meanfield import copy_bytes

    flat_src, flat_dst = src.reshape(-1).view(np.uint8), dst.reshape(-1).view(np.uint8)
    launch(copy_bytes, flat_src.shape[0], flat_src, flat_dst)


def to_device(x):
    """A NumPy array copied to the device."""
    return require().to_device(np.asarray(x, order="C"), stream=stream())  # 0-d arrays stay 0-d


def to_host(x):
    """A device array copied to the host: a new NumPy array (pageable memory, so the copy on the stream is done
    when this returns)."""
    return x.copy_to_host(stream=stream())


def synchronize():
    s = stream()
    if s == 0:
        require().synchronize()
    else:
        s.synchronize()


def as_device_array(x, name):
    """``x`` (any CUDA array) as a C-contiguous Numba device array over the same memory: no copy.

    Raises
    ------
    TypeError
        If Numba cannot use it or it is not C-contiguous (a strided view would need a copy: make it contiguous
        first, e.g. ``tensor.contiguous()`` or ``cupy.ascontiguousarray``).
    """
    cuda = require()
    if type(x).__name__ not in NUMBA_DEVICE_ARRAYS:
        try:
            x = cuda.as_cuda_array(x)
        except Exception as exc:
            raise TypeError(f"`{name}` has __cuda_array_interface__ but Numba cannot use it: {exc}") from None
    if not x.is_c_contiguous():
        raise TypeError(f"`{name}` is a strided (non-contiguous) device array of shape {x.shape}; pass a contiguous "
                        f"one (tensor.contiguous(), cupy.ascontiguousarray(...))")
    return x
