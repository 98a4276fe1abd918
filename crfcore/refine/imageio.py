"""Reading images and per-pixel scores, writing label maps and probabilities, for ``crfcore refine``.

Images are PNG, JPEG or TIFF (8 or 16 bits, grey, RGB, or more channels in TIFF), returned in their own units (the
units ``theta_beta`` is in). Large TIFFs and ``.npy`` scores are opened lazily (``tifffile``/``zarr`` and memory maps),
so a gigapixel image is read tile by tile. Every output is written atomically: to a temporary file beside it, then
renamed, so an interrupted run never leaves a half-written file that a rerun would take for done.

Images are checked against a memory bound before they are decoded: a file whose header promises more pixels than
the run's ``--max-memory`` allows (a decompression bomb, or just too large a PNG) is refused with its size
(:class:`ImageTooLarge`), never allocated. Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is neither read nor
changed: PNG and JPEG files are opened by their format's class, which reads the header alone.

Pillow and tifffile come with the ``refine`` extra (``pip install crfcore[refine]``).
"""

import contextlib
import errno
import os
import socket

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SCORE_EXTS = (".npy", ".npz", ".png")
#: Above this many pixels a TIFF is opened lazily instead of read whole.
LAZY_PIXELS = 1 << 26
_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
#: PNG colour types Pillow reads as 8 bits when they hold 16 (grey with alpha, RGB, RGBA)
_PNG_COLOUR = {2: "RGB", 4: "grey with alpha", 6: "RGBA"}


class ImageTooLarge(ValueError):
    """An input whose decoded pixels would need more memory than the run allows (checked from its header)."""


class UnsupportedImage(ValueError):
    """An image that cannot be read in its own units (a 16-bit colour PNG, a file that is no PNG or JPEG)."""


class WriteError(OSError):
    """An output that could not be written (a full disk, a read-only folder): the run stops, finished files stay.
    Its ``errno`` is the failed write's; its text names the file."""

    def __str__(self):
        return self.strerror or super().__str__()


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - the extra is part of make test's environment
        raise ImportError("reading images needs Pillow: pip install 'crfcore[refine]'") from exc
    return Image


def check_fits(path, what, size, n_bytes, max_bytes):
    """Raise :class:`ImageTooLarge` when ``n_bytes`` (what reading ``path``, ``size`` = (width, height), would
    allocate) exceed ``max_bytes`` (None: no bound)."""
    if max_bytes is not None and n_bytes > max_bytes:
        raise ImageTooLarge(f"{what} {path!r} is {size[0]}x{size[1]} pixels: reading it needs about "
                            f"{n_bytes / 2**30:.1f} GiB, more than the {max_bytes / 2**30:.1f} GiB allowed for one "
                            f"image (--max-memory); raise --max-memory, or store it as a tiled TIFF (read tile by "
                            f"tile)")


def _decoded_bytes(im):
    """The peak bytes of decoding a PIL image and copying it into NumPy: Pillow keeps 4 bytes a pixel for every
    multi-band mode, NumPy the bands themselves (palette images are converted to RGB(A) first)."""
    bands = 4 if im.mode in ("P", "PA") else len(im.getbands())
    item = 2 if im.mode.startswith("I;16") else 4 if im.mode in ("I", "F") else 1
    stored = 4 if bands > 1 else item
    return im.size[0] * im.size[1] * (stored + bands * item + (4 if im.mode in ("P", "PA") else 0))


def open_pil(path, what="image", max_bytes=None):
    """A PNG or JPEG opened lazily (its header read, no pixel decoded), refused before decoding when it would need
    more than ``max_bytes`` (:class:`ImageTooLarge`) or when Pillow would read it in other units than its own
    (16-bit colour PNGs, which it reads as 8 bits: :class:`UnsupportedImage`). Use as a context manager."""
    _pil()
    with open(path, "rb") as f:
        head = f.read(26)
    if head.startswith(_PNG):
        from PIL.PngImagePlugin import PngImageFile as cls

        if len(head) == 26 and head[24] == 16 and head[25] in _PNG_COLOUR:
            raise UnsupportedImage(f"{what} {path!r} is a 16-bit {_PNG_COLOUR[head[25]]} PNG, which Pillow reads "
                                   f"as 8 bits (its values, and theta_beta's units, would change silently); save it "
                                   f"as a 16-bit TIFF (tifffile.imwrite) or an 8-bit PNG")
    elif head.startswith(_JPEG):
        from PIL.JpegImagePlugin import JpegImageFile as cls
    else:
        raise UnsupportedImage(f"{what} {path!r} is not a PNG or JPEG file")
    im = cls(path)  # the format's class reads the header alone, without Pillow's process-wide pixel limit
    try:
        check_fits(path, what, im.size, _decoded_bytes(im), max_bytes)
    except BaseException:
        im.close()
        raise
    return im


def _tifffile():
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover
        raise ImportError("reading TIFF needs tifffile: pip install 'crfcore[refine]'") from exc
    return tifffile


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _channels_last(arr, axes):
    """A TIFF series' array with its sample/channel axis last."""
    axes = axes.upper()
    for ch in ("S", "C"):
        if ch in axes and axes.index(ch) != len(axes) - 1 and arr.ndim == 3:
            return np.moveaxis(arr, axes.index(ch), -1)
    return arr


def read_image(path, lazy=None, max_bytes=None):
    """An image as ``(H, W, C)`` in its own units (uint8, uint16 or float), alpha dropped (PNG's, and TIFF extra
    samples marked as alpha), palette images as RGB.

    ``lazy``: None opens TIFFs of more than :data:`LAZY_PIXELS` pixels lazily (a zarr array that reads the tiles it
    is sliced on; also when True), else reads whole. ``max_bytes``: images read whole that would need more are
    refused from their header (:class:`ImageTooLarge`); 16-bit colour PNGs are refused (:class:`UnsupportedImage`).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in (".tif", ".tiff"):
        tifffile = _tifffile()
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = series.shape, series.axes
            # extra samples marked as alpha (associated 1, unassociated 2) are not colours; unspecified ones (0)
            # are data channels and kept
            alpha = sum(1 for e in (getattr(tif.pages[0], "extrasamples", None) or ()) if int(e) in (1, 2))
            n_bytes = int(np.prod(shape, dtype=object)) * series.dtype.itemsize
        big = int(np.prod(shape[:2])) > LAZY_PIXELS if len(shape) >= 2 else False
        if lazy or (lazy is None and big):
            import zarr

            arr = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
            arr = arr if not isinstance(arr, zarr.Group) else arr[0]
            if arr.ndim == 2:
                return _Lazy(arr, None)
            if axes.upper().index("S" if "S" in axes.upper() else "C") == 0:
                return _Lazy(arr, "first")
            return _Lazy(arr, "last")
        ax = axes.upper()
        size = (shape[ax.index("X")], shape[ax.index("Y")]) if "X" in ax and "Y" in ax else tuple(shape[1::-1])
        check_fits(path, "image", size, n_bytes, max_bytes)
        arr = _channels_last(np.asarray(tifffile.imread(path)), axes)
        if alpha and arr.ndim == 3 and arr.shape[-1] > alpha:
            arr = arr[..., :-alpha]
    else:
        with open_pil(path, "image", max_bytes) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGB" if im.mode != "1" else "L")
            arr = np.asarray(im)
            mode = im.mode
        if mode in ("LA", "RGBA", "PA"):
            arr = arr[..., :-1]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image {path!r} has shape {arr.shape}; expected (H, W) or (H, W, C)")
    if arr.dtype.kind not in "uif" or arr.dtype == np.bool_:
        raise ValueError(f"image {path!r} has unsupported pixel type {arr.dtype}")
    return arr


class _Lazy:
    """A lazily read 2-D or 3-D image, sliced as ``(H, W, C)``."""

    def __init__(self, arr, channels):
        self.arr, self.channels = arr, channels

    @property
    def shape(self):
        s = self.arr.shape
        if self.channels is None:
            return (s[0], s[1], 1)
        return (s[1], s[2], s[0]) if self.channels == "first" else tuple(s)

    def __getitem__(self, key):
        ys, xs = key[:2]
        if self.channels is None:
            return np.asarray(self.arr[ys, xs])[..., None]
        if self.channels == "first":
            return np.moveaxis(np.asarray(self.arr[:, ys, xs]), 0, -1)
        return np.asarray(self.arr[ys, xs])

    def __array__(self, dtype=None, copy=None):
        out = self[slice(None), slice(None)]
        return out if dtype is None else out.astype(dtype)


def read_scores(path, scores_are="probs", n_labels=None, gt_prob=0.7, unknown_label=None, max_bytes=None,
                n_labels_from="`n_labels`"):
    """Per-pixel class scores as logits ``(H, W, L)``: ``.npy``/``.npz`` probabilities or logits (channels last;
    ``.npy`` memory-mapped), or a PNG label map turned into unaries as pydensecrf's ``unary_from_labels`` does.

    Returns ``(scores, kind)``: ``kind`` ``"probs"`` (take the log) or ``"logits"`` for arrays; label maps come back
    as logits. ``n_labels`` is required to be consistent where given; ``n_labels_from`` says where it came from (in
    the error when it is not). ``max_bytes`` bounds what an ``.npz`` or a label map may allocate, from its header.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        arr = np.load(path, mmap_mode="r")
    elif ext == ".npz":
        with np.load(path) as z:
            keys = list(z.keys())
            if not keys:
                raise ValueError(f"{path!r} holds no array")
            if len(keys) > 1:
                raise ValueError(f"{path!r} holds several arrays ({', '.join(keys[:5])}); save one array per file")
            shape, dtype = _npz_header(z, keys[0])
            check_fits(path, "scores", tuple(shape[1::-1]) if len(shape) >= 2 else (0, 0),
                       int(np.prod(shape, dtype=object)) * dtype.itemsize, max_bytes)
            arr = z[keys[0]]
    elif ext == ".png":
        labels = read_label_map(path, max_bytes)
        return labels_to_logits(labels, path, n_labels, gt_prob, unknown_label, max_bytes, n_labels_from), "logits"
    else:
        raise ValueError(f"scores {path!r} must be .npy, .npz or a .png label map")
    if arr.ndim != 3:
        raise ValueError(f"scores {path!r} must have shape (H, W, L), channels last, got {arr.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"scores {path!r} must be floating point ({scores_are}), got {arr.dtype}")
    if n_labels is not None and arr.shape[-1] != n_labels:
        raise ValueError(f"scores {path!r} have {arr.shape[-1]} labels, expected {n_labels} (from {n_labels_from})")
    if arr.shape[-1] < 2:
        raise ValueError(f"scores {path!r} have {arr.shape[-1]} label(s); a CRF needs at least 2")
    return arr, scores_are


def _npz_header(z, key):
    """The shape and dtype of an ``.npz`` member, from its ``.npy`` header (nothing decompressed beyond it)."""
    with z.zip.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def read_label_map(path, max_bytes=None):
    """A single-channel PNG label map as an ``(H, W)`` integer array (refused from its header when decoding it
    would need more than ``max_bytes``)."""
    with open_pil(path, "label map", max_bytes) as im:
        labels = np.asarray(im)
    if labels.ndim != 2:
        raise ValueError(f"label map {path!r} must be a single-channel (grey or palette) PNG, got shape "
                         f"{labels.shape}")
    return labels


def labels_to_logits(labels, path, n_labels, gt_prob, unknown_label, max_bytes=None, n_labels_from="`n_labels`"):
    """pydensecrf's ``unary_from_labels`` as logits: the given label with probability ``gt_prob``, the others sharing
    the rest; ``unknown_label`` pixels uniform. Labels are ``0 .. L-1`` (the unknown value excluded)."""
    if not 0 < gt_prob < 1:
        raise ValueError(f"`gt_prob` must be in (0, 1), got {gt_prob}")
    labels = labels.astype(np.int64)
    known = labels != unknown_label if unknown_label is not None else np.ones(labels.shape, bool)
    values = labels[known]
    if unknown_label is not None and unknown_label == 0:
        values = values - 1  # 1..L with 0 unknown, as pydensecrf's zero_unsure
    n = int(values.max()) + 1 if n_labels is None and values.size else n_labels
    if n is None or n < 2:
        raise ValueError(f"label map {path!r} has fewer than 2 labels; pass --n-labels")
    if values.size and (values.min() < 0 or values.max() >= n):
        raise ValueError(f"label map {path!r} holds labels outside 0..{n - 1}"
                         f"{f' (the {n} labels from {n_labels_from})' if n_labels is not None else ''}")
    # the logits and the per-pixel scratch (int64 labels and indices, a mask)
    check_fits(path, "label map", labels.shape[::-1], labels.size * (4 * n + 17), max_bytes)
    logits = np.full(labels.shape + (n,), np.log((1 - gt_prob) / (n - 1)), np.float32)
    idx = np.where(known, labels - (1 if unknown_label == 0 else 0), 0)
    np.put_along_axis(logits, idx[..., None], np.float32(np.log(gt_prob)), axis=-1)
    logits[~known] = 0.0
    return logits


def to_logits(scores, kind):
    """Scores in float32 logits (probabilities are clipped to ``1e-8`` before the log)."""
    arr = np.asarray(scores, dtype=np.float32)
    if kind == "probs":
        if arr.min() < 0 or arr.max() > 1 + 1e-3:
            raise ValueError(f"probabilities must lie in [0, 1], got values in [{arr.min():.3g}, {arr.max():.3g}] "
                             f"(pass --scores-are logits if they are logits)")
        arr = np.log(np.maximum(arr, 1e-8))
    return arr


_HOST = socket.gethostname().replace("-", "_")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds, remove it otherwise.

    The temporary name carries the host and process (``.NAME.partial-HOST-PID``), so :func:`remove_stale_partials`
    can tell the leftovers of a killed process from the files a running one is writing.
    """
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.partial-{_HOST}-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_partials(folder):
    """Remove the temporary files that processes of this host killed mid-write left in ``folder``; returns them."""
    removed = []
    for f in os.listdir(folder):
        if not f.startswith(".") or ".partial-" not in f:
            continue
        host, _, pid = f.rsplit(".partial-", 1)[1].rpartition("-")
        if host != _HOST or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            os.remove(os.path.join(folder, f))
            removed.append(f)
        except PermissionError:  # alive, someone else's
            pass
    return removed


def palette(n):
    """A palette of ``n`` distinct colours (black for label 0), for viewing label maps."""
    rng = np.random.default_rng(12345)
    colours = rng.integers(40, 256, size=(256, 3))
    colours[0] = 0
    fixed = [(255, 255, 255), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48)]
    for i, c in enumerate(fixed[:255]):
        colours[i + 1] = c
    return colours.astype(np.uint8).ravel().tolist()


def _write_error(path, exc):
    return WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}")


def write_labels(path, labels, n_labels):
    """A label map as PNG, the label index as the pixel value: a palette image (for viewing) up to 256 labels, 16-bit
    grey above. A failed write (a full disk) is a :class:`WriteError` and leaves nothing behind."""
    Image = _pil()
    try:
        with atomic_path(path) as tmp:
            if n_labels <= 256:
                im = Image.new("P", (labels.shape[1], labels.shape[0]))
                im.frombytes(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
                im.putpalette(palette(n_labels))
                im.save(tmp, format="PNG")
            else:
                Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
    except OSError as exc:
        raise _write_error(path, exc) from None


def reserve(fd, offset, length):
    """Allocate a file's blocks from ``offset`` on (``posix_fallocate``; zeros written where the file system cannot),
    so that a full disk is an ``OSError`` now, not a SIGBUS when a memory map of the file is written later."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    zeros = bytes(1 << 20)
    for start in range(offset, offset + length, len(zeros)):
        os.pwrite(fd, zeros[:min(len(zeros), offset + length - start)], start)


def probs_file(path, shape):
    """A float16 ``.npy`` memory map of ``shape`` to fill, written atomically: use as a context manager. Its blocks
    are allocated on entry, so a full disk is a :class:`WriteError` there (and nothing is left behind)."""
    return _ProbsFile(path, shape)


class _ProbsFile:
    def __init__(self, path, shape):
        self.path, self.shape = path, shape
        self._ctx = atomic_path(path)

    def __enter__(self):
        tmp = self._ctx.__enter__()
        try:
            self._mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=self.shape)
            fd = os.open(tmp, os.O_RDWR)
            try:
                reserve(fd, self._mm.offset, self._mm.nbytes)
            finally:
                os.close(fd)
        except OSError as exc:
            self._mm = None
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary file
            raise _write_error(self.path, exc) from None
        return self._mm

    def __exit__(self, *exc):
        try:
            self._mm.flush()
            del self._mm
            return self._ctx.__exit__(*exc)
        except OSError as err:
            if exc[0] is not None:
                raise
            raise _write_error(self.path, err) from None
