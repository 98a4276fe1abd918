"""One file's refinement: what a local run and a Dask worker both execute (:func:`refine_one`)."""

import os
from typing import NamedTuple

import numpy as np

from .._validation import check_finite
from . import imageio, tiling


class Job(NamedTuple):
    """One image to refine (picklable: Dask sends it to a worker)."""

    image: str
    scores: str
    out: str
    options: dict


def outputs(job):
    base = os.path.join(job.out, imageio.stem(job.image))
    return base + ".png", (base + ".npy" if job.options["save_probs"] else None)


def refine_one(job):
    """Refine one image; returns its number of pixels. Raises ValueError (naming the file) on bad inputs, including
    inputs too large for the memory bound and memory running out, and :class:`~crfcore.refine.imageio.WriteError`
    when an output cannot be written (a full disk: the run stops there)."""
    try:
        return _refine_one(job)
    except MemoryError:
        raise ValueError(f"{job.image}: memory ran out refining it (other processes may hold what --max-memory "
                         f"counted on); a smaller --max-memory refines it on smaller tiles") from None


def _refine_one(job):
    o = job.options
    labels_path, probs_path = outputs(job)
    # what one image may allocate: its decoded pixels and scores are checked against it before they are read
    limit = o["max_memory"] or tiling.default_max_memory(o.get("workers", 1))
    try:
        image = imageio.read_image(job.image, max_bytes=limit)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {job.image}: {exc}") from None
    try:
        scores, kind = imageio.read_scores(job.scores, o["scores_are"], o["n_labels"], o["gt_prob"],
                                           o["unknown_label"], max_bytes=limit,
                                           n_labels_from=o.get("n_labels_from", "`n_labels` (--n-labels)"))
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read scores {job.scores}: {exc}") from None
    h, w = image.shape[:2]
    if scores.shape[:2] != (h, w):
        if tuple(scores.shape[1:]) == (h, w):
            raise ValueError(f"scores {job.scores} have shape {tuple(scores.shape)}: channels first (L, H, W) for "
                             f"image {job.image} ({h}x{w}); refine takes (H, W, L), channels last: save "
                             f"np.moveaxis(scores, 0, -1)")
        raise ValueError(f"scores {job.scores} are {scores.shape[1]}x{scores.shape[0]} (shape {tuple(scores.shape)}, "
                         f"read as (H, W, L)) but image {job.image} is {w}x{h}")
    n_lab = scores.shape[-1]

    def logits(ys, xs):
        lg = imageio.to_logits(scores[ys, xs], kind)
        check_finite(lg, f"scores {job.scores}")
        tiling.release_pages(scores)  # the memory-mapped .npy: read tile by tile, never resident whole
        return lg

    dtype = np.dtype(np.uint8 if n_lab <= 256 else np.uint16)
    imageio.check_fits(job.image, "image", (w, h), h * w * dtype.itemsize, limit)  # the label map, even if tiled
    labels = np.empty((h, w), dtype)
    # the budget for the tiles: what is left after the full-size label map and the interpreter
    budget = limit - labels.nbytes - tiling.BASELINE_BYTES
    whole = h * w * (tiling.BYTES_PER_PIXEL[0] + tiling.BYTES_PER_PIXEL[1] * n_lab)
    tile = o["tile"] or (None if whole <= budget else tiling.tile_for_memory(max(budget, 1), n_lab, o["overlap"]))
    try:
        if probs_path is not None:
            with imageio.probs_file(probs_path, (h, w, n_lab)) as probs:
                tiling.refine_tiled(logits, image, tile=tile, overlap=o["overlap"], labels_out=labels,
                                    probs_out=probs, **o["crf"])
        else:
            tiling.refine_tiled(logits, image, tile=tile, overlap=o["overlap"], labels_out=labels, **o["crf"])
    except ValueError as exc:
        raise ValueError(f"{job.image}: {exc}") from None
    imageio.write_labels(labels_path, labels, n_lab)
    return h * w
