"""Python handlers for XLA's typed FFI (``jax.ffi.ffi_call``): XLA hands them its buffers in place.

A handler registered here gets a :class:`Frame`: the call's inputs and outputs as arrays over XLA's own memory
(NumPy arrays on the CPU; Numba device arrays on a CUDA GPU, with XLA's stream and device), so a jitted JAX program
passes crfcore its arrays without a copy and crfcore's CUDA kernels run on the stream XLA orders its work on.

The C structures below are those of ``xla/ffi/api/c_api.h`` (``jax.ffi.include_dir()``), API version 0.1, the
fields this module reads. A handler's Python exception becomes an XLA error carrying its message (JAX raises it as
a ``JaxRuntimeError``): never a crash, never a silent success.
"""

import ctypes as C
import os
import sys
import threading

import numpy as np

# XLA_FFI_DataType values of the dtypes crfcore's calls exchange
DTYPES = {11: np.float32, 12: np.float64, 4: np.int32, 5: np.int64, 6: np.uint8, 2: np.int8, 10: np.float16}

_METADATA_EXTENSION = 1
_EXECUTE = 3
_BUFFER = 1
_INVALID_ARGUMENT, _INTERNAL = 3, 13


class _ExtensionBase(C.Structure):
    pass


_ExtensionBase._fields_ = [("struct_size", C.c_size_t), ("type", C.c_int), ("next", C.POINTER(_ExtensionBase))]


class _ApiVersion(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("major", C.c_int),
                ("minor", C.c_int)]


class _Metadata(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("api_version", _ApiVersion), ("traits", C.c_uint32)]


class _MetadataExtension(C.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", C.POINTER(_Metadata))]


class _Buffer(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("dtype", C.c_int),
                ("data", C.c_void_p), ("rank", C.c_int64), ("dims", C.POINTER(C.c_int64))]


class _Args(C.Structure):  # XLA_FFI_Args and XLA_FFI_Rets have this layout
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("size", C.c_int64),
                ("types", C.POINTER(C.c_int)), ("items", C.POINTER(C.c_void_p))]


class _Attrs(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("size", C.c_int64),
                ("types", C.c_void_p), ("names", C.c_void_p), ("attrs", C.c_void_p)]


class _CallFrame(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.POINTER(_ExtensionBase)), ("api", C.c_void_p),
                ("ctx", C.c_void_p), ("stage", C.c_int), ("args", _Args), ("rets", _Args), ("attrs", _Attrs)]


class _ErrorCreateArgs(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("message", C.c_char_p),
                ("errc", C.c_int)]


class _StreamGetArgs(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("ctx", C.c_void_p),
                ("stream", C.c_void_p)]


class _DeviceOrdinalGetArgs(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("ctx", C.c_void_p),
                ("device_ordinal", C.c_int32)]


_ErrorCreate = C.CFUNCTYPE(C.c_void_p, C.POINTER(_ErrorCreateArgs))
_StreamGet = C.CFUNCTYPE(C.c_void_p, C.POINTER(_StreamGetArgs))
_DeviceOrdinalGet = C.CFUNCTYPE(C.c_void_p, C.POINTER(_DeviceOrdinalGetArgs))


class _Api(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("api_version", _ApiVersion),
                ("internal_api", C.c_void_p), ("Error_Create", _ErrorCreate), ("Error_GetMessage", C.c_void_p),
                ("Error_Destroy", C.c_void_p), ("Handler_Register", C.c_void_p), ("Stream_Get", _StreamGet)]
    _fields_ += [(name, C.c_void_p) for name in (
        "Type_Register", "ExecutionContext_Get", "State_Set", "State_Get", "DeviceMemory_Allocate",
        "DeviceMemory_Free", "ThreadPool_Schedule", "ThreadPool_NumThreads", "Future_Create", "Future_SetAvailable",
        "Future_SetError", "RunId_Get")]
    _fields_ += [("DeviceOrdinal_Get", _DeviceOrdinalGet)]


_HANDLER = C.CFUNCTYPE(C.c_void_p, C.POINTER(_CallFrame))


class Frame:
    """One call: ``inputs`` and ``outputs`` over XLA's buffers (NumPy arrays on ``"cpu"``, Numba device arrays on
    ``"cuda"``), and on ``"cuda"`` XLA's stream (a ``cudaStream_t`` as an int) and the device's ordinal, which is
    Numba's current device while the handler runs."""

    def __init__(self, platform, inputs, outputs, stream=0, device=0):
        self.platform, self.inputs, self.outputs, self.stream, self.device = platform, inputs, outputs, stream, device


def _shape(buf):
    return tuple(int(buf.dims[k]) for k in range(buf.rank))


def _dtype(buf):
    try:
        return np.dtype(DTYPES[buf.dtype])
    except KeyError:
        raise TypeError(f"crfcore's FFI call got an XLA buffer of type {buf.dtype}, which it does not take") from None


def _host_array(buf):
    shape, dtype = _shape(buf), _dtype(buf)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (C.c_byte * nbytes).from_address(buf.data) if nbytes else bytearray()
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _device_array(buf):
    from numba import cuda

    shape, dtype = _shape(buf), _dtype(buf)
    desc = {"shape": shape, "typestr": dtype.str, "data": (buf.data or 0, False), "version": 3, "strides": None}
    return cuda.from_cuda_array_interface(desc, owner=None, sync=False)


def _buffers(items, wrap):
    out = []
    for i in range(items.size):
        if items.types[i] != _BUFFER:
            raise TypeError(f"crfcore's FFI call got a non-buffer argument (type {items.types[i]})")
        out.append(wrap(C.cast(items.items[i], C.POINTER(_Buffer)).contents))
    return out


def _error(api, exc):
    """An XLA_FFI_Error with ``exc``'s message (XLA owns it from here)."""
    code = _INVALID_ARGUMENT if isinstance(exc, (ValueError, TypeError)) else _INTERNAL
    message = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
    args = _ErrorCreateArgs(C.sizeof(_ErrorCreateArgs), None, message, code)
    return api.Error_Create(C.byref(args))


def _stream_and_device(f):
    """XLA's CUDA stream for this call (an int) and its device's ordinal."""
    api = _Api.from_address(f.api)
    stream = _StreamGetArgs(C.sizeof(_StreamGetArgs), None, f.ctx, None)
    if api.Stream_Get(C.byref(stream)):
        raise RuntimeError("XLA gave no CUDA stream to crfcore's FFI call")
    device = 0
    if api.struct_size >= _Api.DeviceOrdinal_Get.offset + C.sizeof(C.c_void_p):  # API 0.2 on
        ordinal = _DeviceOrdinalGetArgs(C.sizeof(_DeviceOrdinalGetArgs), None, f.ctx, 0)
        if not api.DeviceOrdinal_Get(C.byref(ordinal)):
            device = int(ordinal.device_ordinal)
    return stream.stream or 0, device


def _run(fn, f, platform):
    if platform == "cpu":
        return fn(Frame("cpu", _buffers(f.args, _host_array), _buffers(f.rets, _host_array)))
    from numba import cuda

    stream, device = _stream_and_device(f)
    with cuda.gpus[device]:  # the buffers are that device's memory: wrap them in its context
        return fn(Frame("cuda", _buffers(f.args, _device_array), _buffers(f.rets, _device_array), stream, device))


def handler(fn, platform):
    """A ctypes handler (keep a reference to it as long as XLA may call it) that answers XLA's metadata query and
    runs ``fn(frame)`` at the execute stage on ``platform`` (``"cpu"`` or ``"cuda"``)."""

    def call(frame_ptr):
        f = frame_ptr.contents
        ext = f.extension_start
        if ext and ext.contents.type == _METADATA_EXTENSION:  # at registration: which API the handler speaks
            meta = C.cast(ext, C.POINTER(_MetadataExtension)).contents.metadata.contents
            meta.api_version.major, meta.api_version.minor, meta.traits = 0, 1, 0
            return None
        if f.stage != _EXECUTE:
            return None
        try:
            _run(fn, f, platform)
            return None
        except BaseException as exc:  # noqa: B902  every error goes back to XLA, never through ctypes
            try:
                return _error(_Api.from_address(f.api), exc)
            except BaseException:  # pragma: no cover  no error API to report through: XLA would take it as done
                sys.stderr.write(f"crfcore: an FFI call failed ({exc!r}) and XLA's error API did not answer\n")
                os.abort()

    return _HANDLER(call)


_lock = threading.Lock()
_registered = {}  # target name -> its handlers (kept alive: XLA holds bare pointers)


def register(name, fn):
    """Register ``fn`` (called with a :class:`Frame`) as XLA FFI target ``name`` on the CPU and on CUDA GPUs, once."""
    import jax

    with _lock:
        if name in _registered:
            return
        handlers = {platform: handler(fn, platform) for platform in ("cpu", "cuda")}
        for platform, h in handlers.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(h), platform="cpu" if platform == "cpu" else "CUDA")
        _registered[name] = handlers
