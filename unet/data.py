"""Data for the pipeline: a folder of images and masks, or the embedded synthetic generator.

A folder holds ``images/`` and ``masks/`` with the same stems. Nothing is silently guessed: an image is scaled by
its bit depth (8-bit by 255, 16-bit by 65535), a mask is read by its values (0 is background, the one other value
foreground, palette masks by their indices), and a mask of another size than its image, two files with one stem,
a file that cannot be read or a manifest row that names no image is an error that names the file.
"""

import csv
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from . import synth

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "dev", "test")
#: Split names a manifest may use, and the split each one means.
SPLIT_NAMES = {"train": "train", "training": "train", "dev": "dev", "val": "dev", "valid": "dev",
               "validation": "dev", "test": "test", "testing": "test"}
#: Columns a manifest may name its images by (the first one present is used; else the first column).
ID_COLUMNS = ("id", "stem", "name", "filename", "file", "image")
#: Synthetic streams: one per split, plus one for the CRF-RNN stage.
STREAMS = SPLITS + ("crf",)


def stream_seed(seed, name):
    """The generator seed of the synthetic stream ``name`` (disjoint streams for one run seed)."""
    return seed * 1000 + STREAMS.index(name)


class Dataset:
    """Images ``(n, size, size, 3)`` float32 in [0, 1], masks ``(n, size, size)`` uint8 in {0, 1}, names.

    ``shapes``: each image's ``(height, width)`` before it was resized (None for generated images), so that
    figures can show a photo in its own proportions.
    """

    def __init__(self, images, masks, names, shapes=None):
        self.images, self.masks, self.names = images, masks, list(names)
        self.shapes = None if shapes is None else [tuple(s) for s in shapes]

    def __len__(self):
        return len(self.names)

    def concat(self, other):
        """This set followed by ``other`` (same image size)."""
        shapes = None
        if self.shapes is not None or other.shapes is not None:
            shapes = [*(self.shapes or [self.images.shape[1:3]] * len(self)),
                      *(other.shapes or [other.images.shape[1:3]] * len(other))]
        return Dataset(np.concatenate([self.images, other.images]), np.concatenate([self.masks, other.masks]),
                       self.names + other.names, shapes)

    def subset(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(self.images[idx], self.masks[idx], [self.names[i] for i in idx],
                       None if self.shapes is None else [self.shapes[i] for i in idx])


def _read_array(path):
    """The pixel array of an image file as stored (TIFF through tifffile where installed, else Pillow), and
    whether its values are palette indices."""
    if path.lower().endswith((".tif", ".tiff")):
        try:
            import tifffile
        except ImportError:
            tifffile = None
        if tifffile is not None:
            return np.asarray(tifffile.imread(path)), False
    with Image.open(path) as im:
        im.load()  # decode now: a truncated file fails here, not later
        if im.mode == "P":
            return np.asarray(im), True
        if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        return np.asarray(im), False


def read_array(path, what):
    """:func:`_read_array`, with any failure reported as a ValueError naming the file."""
    try:
        return _read_array(path)
    except Exception as exc:  # PIL/tifffile raise many types for corrupt, truncated or unsupported files
        raise ValueError(f"cannot read {what} {path!r}: {exc}") from exc


def image_to_float(arr, path):
    """An image array as ``(H, W, 3)`` float32 in [0, 1], scaled by its bit depth; grey becomes RGB, alpha goes."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image {path!r} has shape {arr.shape}; expected (H, W) or (H, W, C)")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind in "ui":
        if arr.min() < 0:
            raise ValueError(f"image {path!r} has negative values ({arr.dtype}); expected unsigned pixel values")
        if arr.dtype == np.uint8:
            depth = 255.0
        elif arr.max() <= 65535:  # 16-bit (PIL reads some 16-bit files as 32-bit ints)
            depth = 65535.0
        else:
            raise ValueError(f"image {path!r} has {arr.dtype} values up to {arr.max()}; expected 8 or 16 bits")
        out = arr.astype(np.float32) / np.float32(depth)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"image {path!r} contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"float image {path!r} has values in [{lo:.3g}, {hi:.3g}]; expected [0, 1]")
        out = arr.astype(np.float32)
    else:
        raise ValueError(f"image {path!r} has unsupported pixel type {arr.dtype}")
    channels = out.shape[-1]
    if channels in (1, 2):  # grey (+ alpha)
        out = np.repeat(out[..., :1], 3, axis=-1)
    elif channels == 4:  # RGBA
        out = out[..., :3]
    elif channels != 3:
        raise ValueError(f"image {path!r} has {channels} channels; the U-Net takes grey, RGB or RGBA images")
    return np.ascontiguousarray(out)


def mask_to_binary(arr, path, palette=False):
    """A mask array as ``(H, W)`` uint8 in {0, 1}: 0 is background, the one other value foreground.

    Palette masks are read by their indices. A mask with more than two values (colours) is refused: the task is
    binary, and lossy formats (JPEG) blur the edges into many values, so save masks as PNG.
    """
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):  # drop alpha
            arr = arr[..., :-1]
        if arr.shape[-1] == 3:
            flat = arr.reshape(-1, 3)
            values = np.unique(flat, axis=0)
            if len(values) > 2:
                raise ValueError(f"mask {path!r} has {len(values)} colours; a binary mask has two (black for the "
                                 f"background, one colour for the document){_lossy_hint(path)}")
            return np.ascontiguousarray(arr.any(axis=-1).astype(np.uint8))
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask {path!r} has shape {arr.shape}; expected (H, W)")
    values = np.unique(arr)
    if len(values) > 2:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise ValueError(f"mask {path!r} has {len(values)} values ({shown}); a binary mask has 0 for the background "
                         f"and one value for the document{' (palette indices)' if palette else ''}"
                         f"{_lossy_hint(path)}")
    if len(values) == 2 and values[0] != 0:
        raise ValueError(f"mask {path!r} has values {values.tolist()} but no 0; 0 must mark the background")
    return (arr != 0).astype(np.uint8)


def _lossy_hint(path):
    return "; JPEG masks are lossy: save masks as PNG" if path.lower().endswith((".jpg", ".jpeg")) else ""


def _resize(image, mask, size):
    """Bilinear for the image (in float, whatever its bit depth), nearest for the mask; None keeps the size."""
    if size is None:
        return image, mask
    if image.shape[:2] != (size, size):
        image = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize((size, size), Image.BILINEAR))
                          for c in range(image.shape[-1])], -1)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return image, mask


def load_pair(image_path, mask_path, size):
    """One image and its mask, checked, as ``(float32 (size, size, 3), uint8 (size, size), (height, width))``, the
    last the size the files have."""
    image = image_to_float(read_array(image_path, "image")[0], image_path)
    arr, palette = read_array(mask_path, "mask")
    mask = mask_to_binary(arr, mask_path, palette)
    if mask.shape != image.shape[:2]:
        hint = " (transposed?)" if mask.shape == image.shape[1::-1] else ""
        raise ValueError(f"mask {mask_path!r} is {mask.shape[1]}x{mask.shape[0]} but image {image_path!r} is "
                         f"{image.shape[1]}x{image.shape[0]}{hint}; masks must have their image's size")
    return _resize(image, mask, size) + (mask.shape,)


def _by_stem(folder, what):
    """``{stem: file}`` of the images in ``folder``; two files with one stem are an error."""
    out = {}
    for f in sorted(os.listdir(folder)):
        if not f.lower().endswith(IMAGE_EXTS) or f.startswith("."):
            continue
        stem = os.path.splitext(f)[0]
        if stem in out:
            raise ValueError(f"two {what} files share the stem {stem!r} in {folder!r}: {out[stem]!r} and {f!r}; "
                             f"keep one")
        out[stem] = f
    return out


def load_folder(path, size=224, workers=None):
    """Load ``path/images/*`` with ``path/masks/<same stem>.*``, resized to ``size`` (None keeps the sizes).

    Returns
    -------
    Dataset
        Sorted by name.

    Raises
    ------
    ValueError
        A missing folder, no images, an image without a mask (or two files with one stem), a file that cannot be
        read, a mask of another size than its image or with more than two values: each names the files.
    """
    img_dir, mask_dir = os.path.join(path, "images"), os.path.join(path, "masks")
    if not os.path.isdir(img_dir) or not os.path.isdir(mask_dir):
        raise ValueError(f"{path!r} must contain 'images/' and 'masks/' folders")
    images = _by_stem(img_dir, "image")
    masks = _by_stem(mask_dir, "mask")
    if not images:
        raise ValueError(f"no images in {img_dir!r} (looked for {', '.join(IMAGE_EXTS)})")
    missing = [f for stem, f in images.items() if stem not in masks]
    if missing:
        raise ValueError(f"no mask in {mask_dir!r} for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    stems = sorted(images)
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        pairs = list(pool.map(lambda s: load_pair(os.path.join(img_dir, images[s]), os.path.join(mask_dir, masks[s]),
                                                   size), stems))
    if size is None and len({p[0].shape for p in pairs}) > 1:
        raise ValueError(f"the images in {img_dir!r} differ in size; pass a size to resize them")
    return Dataset(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), stems, [p[2] for p in pairs])


def _read_manifest(manifest):
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"manifest {manifest!r} is empty")
    header = [h.strip().lower() for h in rows[0]]
    return header, rows[1:]


def split(dataset, path=None, seed=0, fractions=(0.7, 0.15, 0.15)):
    """``{"train", "dev", "test"} -> Dataset``.

    With ``path/manifest.csv`` holding a ``split`` column, from it: images named by an ``id`` column (or ``stem``,
    ``name``, ``filename``, ``file``, ``image``, with or without extension; else the first column); split names
    ``train``/``training``, ``dev``/``val``/``valid``/``validation`` and ``test``/``testing`` (any case). Without test
    rows, the dev split is tested on (a warning says so); unknown split names, rows naming no image and duplicate
    rows are errors naming them; images the manifest leaves out are left out with a warning. Without a manifest,
    a seeded shuffle in ``fractions``.
    """
    manifest = None if path is None else os.path.join(path, "manifest.csv")
    if manifest and os.path.exists(manifest):
        header, rows = _read_manifest(manifest)
        if "split" in header:
            return _manifest_split(dataset, manifest, header, rows)
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_train = int(round(fractions[0] * len(dataset)))
    n_dev = int(round(fractions[1] * len(dataset)))
    return {"train": dataset.subset(np.sort(order[:n_train])),
            "dev": dataset.subset(np.sort(order[n_train:n_train + n_dev])),
            "test": dataset.subset(np.sort(order[n_train + n_dev:]))}


def _manifest_split(dataset, manifest, header, rows):
    key = next((c for c in ID_COLUMNS if c in header), header[0])
    k, s = header.index(key), header.index("split")
    index = {name: i for i, name in enumerate(dataset.names)}
    where, unknown, unmatched = {}, [], []
    for line, row in enumerate(rows, start=2):
        if len(row) <= max(k, s):
            raise ValueError(f"{manifest}, line {line}: expected {len(header)} columns, got {len(row)}: {row}")
        name = row[k].strip()
        stem = os.path.splitext(name)[0] if name.lower().endswith(IMAGE_EXTS) else name
        stem = os.path.basename(stem)
        label = row[s].strip().lower()
        if label not in SPLIT_NAMES:
            unknown.append((line, row[s].strip()))
            continue
        if stem not in index:
            unmatched.append((line, name))
            continue
        if stem in where:
            raise ValueError(f"{manifest}, line {line}: {name!r} is listed twice")
        where[stem] = SPLIT_NAMES[label]
    if unknown:
        names = sorted({v for _, v in unknown})
        raise ValueError(f"{manifest}: unknown split name(s) {names} (lines {[ln for ln, _ in unknown][:10]}); use "
                         f"train, dev (or val, valid, validation) and test")
    if unmatched:
        raise ValueError(f"{manifest}: {len(unmatched)} row(s) name no image in images/: "
                         f"{[f'line {ln}: {n!r}' for ln, n in unmatched[:5]]}")
    left_out = [n for n in dataset.names if n not in where]
    if left_out:
        warnings.warn(f"{manifest} does not list {len(left_out)} image(s), left out: {left_out[:5]}"
                      f"{'...' if len(left_out) > 5 else ''}", stacklevel=3)
    parts = {sp: dataset.subset([index[n] for n in dataset.names if where.get(n) == sp]) for sp in SPLITS}
    if not len(parts["train"]):
        raise ValueError(f"{manifest} has no train rows")
    if not len(parts["test"]):
        warnings.warn(f"{manifest} has no test rows: the dev split ({len(parts['dev'])} images) is tested on",
                      stacklevel=3)
        parts["test"] = parts["dev"]
    return parts


def synthetic(n, seed, size=224, workers=None, progress=None):
    """``n`` synthetic samples for ``seed`` (deterministic), rendered on ``workers`` threads.

    Threads, not processes: NumPy, SciPy and Pillow release the GIL in their heavy loops, and a process pool
    would have to fork TensorFlow or re-import the caller's ``__main__``.
    """
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks = [(a, min(n, a + 8)) for a in range(0, n, 8)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        parts = pool.map(lambda c: synth.dataset_range(seed, c[0], c[1], size), chunks)
        if progress is not None:
            parts = progress(parts, total=len(chunks), desc=f"rendering {n} synthetic photos")
        parts = list(parts)
    images = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, size, size, 3), np.float32)
    masks = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, size, size), np.uint8)
    return Dataset(images, masks, [f"synth{seed}_{i:05d}" for i in range(n)])


def synthetic_splits(n_train, n_dev, n_test, seed, size=224, progress=None, only=SPLITS):
    """Disjoint synthetic train/dev/test sets (different seeds per split); ``only``: just the splits named (each is
    its own seeded stream, so the same photos either way)."""
    return {name: synthetic(n, stream_seed(seed, name), size, progress=progress)
            for name, n in zip(SPLITS, (n_train, n_dev, n_test)) if name in only}


def groups(dataset, path, column=None):
    """Each image's group, from ``path/manifest.csv``: the value of ``column`` (default ``group``), or its first
    path component when it is a path (SmartDoc's ``source_file``, ``background01/letter001/frame_0098.jpeg``, gives
    ``background01``).

    For cross-validation by group (a background, a camera, a customer): photos of one group share more than photos
    of two, so holding out a whole group measures what a new one will get.

    Raises
    ------
    ValueError
        No manifest, no such column (the message lists the columns), or an image the manifest does not list.
    """
    manifest = os.path.join(path, "manifest.csv")
    if not os.path.exists(manifest):
        raise ValueError(f"no manifest.csv in {path!r}: grouping needs one with a column naming each image's group; "
                         f"or use folds of a seeded shuffle (--folds)")
    header, rows = _read_manifest(manifest)
    column = (column or "group").strip().lower()
    if column not in header:
        raise ValueError(f"{manifest} has no column {column!r}; its columns: {header}")
    key = next((c for c in ID_COLUMNS if c in header), header[0])
    k, g = header.index(key), header.index(column)
    found = {}
    for line, row in enumerate(rows, start=2):
        if len(row) <= max(k, g):
            raise ValueError(f"{manifest}, line {line}: expected {len(header)} columns, got {len(row)}: {row}")
        name = row[k].strip()
        stem = os.path.basename(os.path.splitext(name)[0] if name.lower().endswith(IMAGE_EXTS) else name)
        value = row[g].strip().replace("\\", "/")
        found[stem] = value.split("/")[0] if "/" in value else value
    missing = [n for n in dataset.names if n not in found]
    if missing:
        raise ValueError(f"{manifest} names no {column!r} for {len(missing)} image(s): {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}")
    return [found[n] for n in dataset.names]
