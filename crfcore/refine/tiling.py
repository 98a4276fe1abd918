"""Mean field on overlapping tiles, so an image of any size runs in bounded memory.

Each tile is refined with a margin of ``overlap`` pixels around it and only its interior is kept. The kernels of a
dense CRF reach about three widths (``3 * theta_alpha`` pixels for the bilateral kernel), so with a margin of that
size a tile's interior sees what the whole image would show it; :data:`DEFAULT_OVERLAP` was chosen from the
measurement in the README ("Refining data sets"). An image that fits in one tile is refined whole, exactly as
:func:`crfcore.meanfield` does.
"""

import math
import mmap
import os

import numpy as np

from ..inference import meanfield

#: Margin of each tile in pixels (see the README for the agreement measured at 4096^2 against the untiled result).
DEFAULT_OVERLAP = 128
#: Estimated peak bytes per pixel of mean field: a constant plus a share per label (measured: 1024^2 RGB used 100 MiB
#: at L=2 and 290 MiB at L=21; a 5650^2 tile of a 20000^2 image ~195 B/px at L=2), with a margin for the tile's
#: inputs and outputs.
BYTES_PER_PIXEL = (210.0, 14.0)
#: Memory outside the tiles: the interpreter and libraries (the full-size label map is counted separately), and the
#: spatial kernels meanfield keeps between calls (at most 2^21 points at ~56 bytes: 112 MiB).
BASELINE_BYTES = (400 << 20) + (112 << 20)


def total_memory():
    """Physical memory in bytes (or 8 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_max_memory(workers=1):
    """A safe share of RAM for one refinement: a quarter of it, split between ``workers`` processes."""
    return total_memory() // 4 // max(1, workers)


def tile_for_memory(max_memory, n_labels, overlap):
    """The largest tile side (interior) whose mean field fits in ``max_memory`` bytes, with its margins."""
    per_pixel = BYTES_PER_PIXEL[0] + BYTES_PER_PIXEL[1] * n_labels
    side = int(math.sqrt(max_memory / per_pixel)) - 2 * overlap
    if side < 64:
        raise ValueError(f"--max-memory {max_memory / 2**20:.0f} MiB is too small for tiles with a {overlap}-pixel "
                         f"margin at {n_labels} labels; allow more memory or a smaller overlap")
    return side


def release_pages(*arrays):
    """Drop the resident pages of memory-mapped arrays (``np.memmap``), flushing writable ones first: a memory map
    read or written tile by tile would otherwise keep every page it touched in the process's resident memory.
    The data stays in the file (and the page cache); anything else passes through."""
    for arr in arrays:
        base = getattr(arr, "_mmap", None)
        if base is None or not hasattr(base, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            continue
        if getattr(arr, "mode", "r") != "r":
            arr.flush()
        base.madvise(mmap.MADV_DONTNEED)


def tiles(height, width, tile, overlap):
    """``(inner, outer)`` slices ``((y0, y1), (x0, x1))`` of each tile: the interior kept and the region refined."""
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(height, y0 + tile), min(width, x0 + tile)
            outer = ((max(0, y0 - overlap), min(height, y1 + overlap)),
                     (max(0, x0 - overlap), min(width, x1 + overlap)))
            yield ((y0, y1), (x0, x1)), outer


def refine_tiled(logits, image, *, tile, overlap=DEFAULT_OVERLAP, labels_out=None, probs_out=None, progress=None,
                 **params):
    """Labels (and probabilities) of a 2-D image by mean field on tiles of ``tile`` pixels with ``overlap`` margins.

    Parameters
    ----------
    logits : array-like (H, W, L), sliceable
        Logits, or anything that gives float logits for a slice (a function of ``(ys, xs)``).
    image : array-like (H, W, C), sliceable (a NumPy array, a memory map, a lazily read TIFF)
    tile : int or None
        Interior size of a tile; None or at least the image size: one tile.
    labels_out : ndarray (H, W), optional
        Receives the labels (allocated as uint8/uint16 if None).
    probs_out : ndarray (H, W, L), optional
        Receives the probabilities (e.g. a float16 memory map).
    progress : callable, optional
        Called with the number of pixels done after each tile.
    params
        :func:`crfcore.meanfield`'s keyword arguments.

    Returns
    -------
    ndarray (H, W)
        The labels.
    """
    height, width = image.shape[:2]
    n_lab = logits.shape[-1] if hasattr(logits, "shape") else None
    if labels_out is None:
        labels_out = np.empty((height, width), np.uint8 if (n_lab or 2) <= 256 else np.uint16)
    tile = max(height, width) if tile is None else int(tile)
    get_logits = logits if callable(logits) else (lambda ys, xs: np.asarray(logits[ys, xs], dtype=np.float32))
    for (iy, ix), (oy, ox) in tiles(height, width, tile, overlap):
        ys, xs = slice(*oy), slice(*ox)
        q = meanfield(get_logits(ys, xs), np.asarray(image[ys, xs]), **params)
        inner = (slice(iy[0] - oy[0], iy[1] - oy[0]), slice(ix[0] - ox[0], ix[1] - ox[0]))
        labels_out[iy[0]:iy[1], ix[0]:ix[1]] = q[inner].argmax(-1)
        if probs_out is not None:
            probs_out[iy[0]:iy[1], ix[0]:ix[1]] = q[inner]
        release_pages(logits, image, probs_out)
        if progress is not None:
            progress((iy[1] - iy[0]) * (ix[1] - ix[0]))
    return labels_out
