"""The checks of the arrays a CUDA computation is given: device or host inputs as device arrays, their values
finite, the logits' ``-inf`` allowed only where they mark impossible labels (:mod:`crfcore._validation`'s checks on
the device).
"""

import numpy as np

from .._validation import check_logits_values, nonfinite_error, supported_float_type
from . import device as dev
from .lattice import feature_range


def device_input(x, name, *, float_only):
    """``x`` as a C-contiguous device array and whether it was one (NumPy input is copied to the device).

    ``float_only``: it must be float32 or float64 (other floats on the host become float32).
    """
    if dev.is_device_array(x):
        arr = dev.as_device_array(x, name)
        dtype = np.dtype(arr.dtype)
        if float_only and dtype not in (np.float32, np.float64):
            raise TypeError(f"`{name}` on the device must be float32 or float64, got {dtype}; convert it first")
        if not float_only and (dtype.kind not in "fiu" or dtype == np.bool_):
            raise TypeError(f"`{name}` must be a real numeric array (uint8 or float), got dtype {dtype}")
        return arr, True
    arr = np.asarray(x)
    if float_only:
        dtype = supported_float_type(arr.dtype) if arr.dtype.kind == "f" else None
        if dtype is None:
            raise TypeError(f"`{name}` must be a floating-point array (float32 or float64), got dtype {arr.dtype}; "
                            f"convert it with `.astype(np.float32)`")
        arr = arr.astype(dtype, copy=False)
    elif arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"`{name}` must be a real numeric array (uint8 or float), got dtype {arr.dtype}")
    return dev.to_device(arr), False


def check_finite(x, name):
    """Raise ValueError when the device array ``x`` holds NaN or infinity; returns its (min, max) (host floats)."""
    flat = x.reshape(-1, tuple(x.shape)[-1]) if x.ndim > 1 else x.reshape(-1, 1)
    lo, hi, bad = feature_range(flat)
    if bad:
        raise nonfinite_error(name, bad)
    return float(lo.min()), float(hi.max())


def check_logits(u, name="logits"):
    """:func:`~crfcore._validation.check_logits_values` for the device array ``u``: one range pass on the
    device; only logits with non-finite values (``-inf`` marks an impossible label) are copied to the host to say
    whether they are allowed."""
    flat = u.reshape(-1, tuple(u.shape)[-1])
    if feature_range(flat)[2]:
        check_logits_values(dev.to_host(flat), name)


def check_grad(grad, shape, dtype):
    """The backward's ``grad`` as a device array, checked: the forward output's ``shape`` and ``dtype``, finite."""
    g, _ = device_input(grad, "grad", float_only=True)
    if tuple(g.shape) != tuple(shape):
        raise ValueError(f"`grad` must have the output's shape {tuple(shape)}, got {tuple(g.shape)}")
    if np.dtype(g.dtype) != dtype:
        raise TypeError(f"`grad` must have the forward's dtype {dtype}, got {np.dtype(g.dtype)}")
    check_finite(g, "grad")
    return g
