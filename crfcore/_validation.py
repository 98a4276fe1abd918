"""Input checks shared by the public functions: one dtype rule, one place."""

import numbers

import numpy as np


class IterationCountError(TypeError, ValueError):
    """A number of iterations that is not an int: a ``TypeError``, and a ``ValueError`` as ``crf`` and the adapters
    raised before the check was one (an ``except`` written for either still catches it)."""


class LatticeRangeError(ValueError):
    """Features too large for the permutohedral lattice's integer coordinates: kernel widths too small for the
    positions or values they divide. Raised by the lattice and re-raised by the entry points naming the width."""


def supported_float_type(dtype):
    """The float dtype computations run in for an input of ``dtype``.

    float32 and float64 are kept; any other real float (float16, longdouble) becomes float32.
    Anything else returns None (the caller raises with its argument's name).
    """
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.dtype(np.float64)
    if dtype.kind == "f":
        return np.dtype(np.float32)
    return None


#: Numba's device array types (the simulator's have no ``__cuda_array_interface__``).
NUMBA_DEVICE_ARRAYS = ("DeviceNDArray", "MappedNDArray", "ManagedNDArray", "FakeCUDAArray")


def is_device_array(x):
    """Whether ``x`` lives on a CUDA device: it has ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors), or
    is a Numba device array."""
    return hasattr(x, "__cuda_array_interface__") or type(x).__name__ in NUMBA_DEVICE_ARRAYS


def host_array(x, name):
    """``np.asarray(x)`` for an input of a CPU computation; a clear error for an array on a CUDA device (which
    NumPy would copy silently, or refuse with the framework's message)."""
    if not isinstance(x, np.ndarray) and is_device_array(x):  # NumPy inputs, the common case, skip the probe
        raise TypeError(f"`{name}` is on a CUDA device ({type(x).__name__}) but this call computes on the CPU: pass "
                        f"device='cuda' (meanfield, crf and their forwards take it) or copy it to the host first")
    return np.asarray(x)


def as_float_array(x, name, *, dtype=None):
    """``x`` as a C-contiguous float32/float64 array (a copy where needed; inputs are never modified).

    Parameters
    ----------
    x : array_like
        The input.
    name : str
        The argument's name, for error messages.
    dtype : numpy dtype, optional
        Force this dtype instead of the dtype rule of :func:`supported_float_type`.
    """
    arr = host_array(x, name)
    if dtype is None:
        dtype = supported_float_type(arr.dtype)
        if dtype is None:
            raise TypeError(
                f"`{name}` must be a floating-point array (float32 or float64), got dtype {arr.dtype}; "
                f"convert it with `.astype(np.float32)`"
            )
    elif arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"`{name}` must be a real numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def nonfinite_error(name, bad, note=""):
    """The one error for ``bad`` NaN or infinite values in the argument ``name`` (``note`` says where they came
    from, e.g. a conversion to float32)."""
    return ValueError(f"`{name}` contains {bad} NaN or infinite value(s){note}; clean or clip it before calling")


def check_finite(arr, name, note=""):
    """Raise :func:`nonfinite_error` when ``arr`` holds NaN or infinity."""
    if not np.isfinite(arr).all():
        raise nonfinite_error(name, int(np.size(arr) - np.count_nonzero(np.isfinite(arr))), note)


def check_logits_values(u, name="logits", *, labels_axis=-1, sign=1.0):
    """Raise ValueError unless ``u`` is finite or ``-inf`` where a label is impossible.

    ``-inf`` logits (``+inf`` energies with ``sign=-1``, densecrf's convention) give that label probability 0, as
    densecrf does for a saturated ``-log(p)``. NaN, ``+inf`` logits, and a point whose every label is impossible
    (densecrf returns NaN there) raise, naming ``name``. The fast path is one ``isfinite`` pass.
    """
    if np.isfinite(u).all():
        return
    nan = int(np.count_nonzero(np.isnan(u)))
    wrong = int(np.count_nonzero(np.isposinf(u) if sign > 0 else np.isneginf(u)))
    if nan or wrong:
        what = "+inf" if sign > 0 else "-inf"
        counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (wrong, what)) if n)
        raise ValueError(f"`{name}` contains {counts} value(s); clean or clip it before calling "
                         f"({'-inf' if sign > 0 else '+inf'}, an impossible label, is allowed)")
    impossible = np.all(np.isinf(u), axis=labels_axis)
    if impossible.any():
        first = tuple(int(i) for i in np.argwhere(impossible)[0])
        raise ValueError(f"`{name}` makes every label impossible ({'-' if sign > 0 else '+'}inf for all labels) at "
                         f"{int(np.count_nonzero(impossible))} point(s), the first at index {first}: at least one "
                         f"label must be possible at each point")


def check_nonempty(arr, name):
    check_nonempty_shape(tuple(arr.shape), name)


def check_nonempty_shape(shape, name):
    if int(np.prod(shape)) == 0:
        raise ValueError(f"`{name}` is empty (shape {shape}); pass at least one element")


def check_spatial_dims(spatial_dims):
    """``spatial_dims``: an int >= 1, or a clear error."""
    if isinstance(spatial_dims, (bool, np.bool_)) or not isinstance(spatial_dims, (numbers.Integral, np.integer)):
        raise TypeError(f"`spatial_dims` must be an int, got {type(spatial_dims).__name__}")
    if spatial_dims < 1:
        raise ValueError(f"`spatial_dims` must be >= 1, got {spatial_dims}")


def check_logits_shape(shape, spatial_dims):
    """The logits' shape ``(..., *spatial, L)``: enough axes, not empty, at least two labels."""
    if len(shape) < spatial_dims + 1:
        raise ValueError(
            f"`logits` must have shape (..., *spatial, L) with {spatial_dims} spatial axes, got shape {shape}"
        )
    check_nonempty_shape(shape, "logits")
    if shape[-1] < 2:
        raise ValueError(f"`logits` has {shape[-1]} label(s) in its last axis; a CRF needs L >= 2")


def check_logits_shape_2d(shape):
    """``logits`` must be ``(N, L)``, non-empty, with ``L >= 2``."""
    if len(shape) != 2:
        raise ValueError(f"`logits` must have shape (N, L), got {tuple(shape)}")
    check_nonempty_shape(tuple(shape), "logits")
    if shape[1] < 2:
        raise ValueError(f"`logits` has {shape[1]} label(s); a CRF needs L >= 2")


def image_shape_with_channels(logits_shape, image_shape, spatial_dims):
    """The image's shape with its channel axis (a single-channel image may omit it), checked against the logits'
    (layout, batch and spatial axes, not empty)."""
    if image_shape == logits_shape[:-1]:
        image_shape = image_shape + (1,)
    check_layout(logits_shape, image_shape, spatial_dims)
    if image_shape[:-1] != logits_shape[:-1]:
        raise ValueError(
            f"`image` has shape {image_shape} but `logits` has shape {logits_shape}; all axes but the last must match "
            f"(batch and spatial): resize one to match"
        )
    check_nonempty_shape(image_shape, "image")
    return image_shape


def positive_scalar(x, name):
    """``x`` as a positive finite float, or a clear error."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Real, np.ndarray, np.generic)):
        raise TypeError(f"`{name}` must be a positive real number, got {type(x).__name__}")
    x = np.asarray(x)
    if x.ndim != 0:
        raise TypeError(f"`{name}` must be a scalar, got an array of shape {x.shape}")
    x = float(x)
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {x}")
    return x


def check_layout(logits_shape, image_shape, spatial_dims, channels="last"):
    """Raise a ValueError naming the expected layout where the shapes say the axes are swapped.

    ``channels="last"`` (the core, JAX, TensorFlow): ``(..., *spatial, L)`` and ``(..., *spatial, C)``; given
    channels-first arrays ``(..., C, H, W)``, the "labels" and "channels" read are the width, and the first
    "spatial" axis a small channel count. ``channels="first"`` (PyTorch): ``(B, L, *spatial)``; given channels-last
    tensors, the "channels" read are the height and the last spatial axis a small channel count.
    """
    lg, img = tuple(logits_shape), tuple(image_shape)
    if len(lg) != len(img) or len(lg) < spatial_dims + 1:
        return
    if channels == "last":
        if lg[-1] == img[-1] > 16 and img[-1 - spatial_dims] <= 4:
            raise ValueError(
                f"`logits` {lg} and `image` {img} look channels first ((..., L, H, W) and (..., C, H, W)): "
                f"they would be read as {lg[-1]} labels and {img[-1]} channels. This function takes channels last, "
                f"(..., *spatial, L) and (..., *spatial, C): move the channel axis last (np.moveaxis(x, -3, -1))")
        return
    if img[1] > 4 and img[-1] <= 4 and lg[-1] <= 64 and lg[1:-1] == img[1:-1]:
        raise ValueError(
            f"`logits` {lg} and `image` {img} look channels last ((B, H, W, L) and (B, H, W, C)): they would be read "
            f"as {lg[1]} labels and {img[1]} channels. The PyTorch adapter takes channels first, (B, L, *spatial) "
            f"and (B, C, *spatial): permute them (x.permute(0, 3, 1, 2))")


DEVICES = ("cpu", "cuda")


def check_device(device):
    """``device``: one of :data:`DEVICES`, or a clear error."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"`device` must be one of {DEVICES}, got {device!r}")
    return device


def check_backward_device(device, on_cuda):
    """A backward's ``device`` (None: where the forward ran) must be where the forward's residuals are."""
    ran = "cuda" if on_cuda else "cpu"
    if device is not None and check_device(device) != ran:
        raise ValueError(f"device={device!r} but the forward ran on {ran}: the backward runs where the forward's "
                         f"residuals are (leave `device` out)")
