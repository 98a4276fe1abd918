"""One file's refinement: what a local run and a Dask worker both execute (:func:`refine_one`)."""

import collections
import contextlib
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from .._validation import check_finite
from ..inference import ACROSS_MAX_PIXELS, meanfield
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
    return _guarded(job, lambda: _finish(job, _prepare(job)))


def refine_jobs(jobs, batch_size):
    """``(job, pixels or ValueError)`` for each of ``jobs``, as :func:`refine_one` would give them; a
    :class:`~crfcore.refine.imageio.WriteError` stops it. Small images read one after the other wait (at most
    ``batch_size``, and together no more memory than one image may use) and those of one shape and label count go
    to :func:`crfcore.meanfield` as one batch, which runs them side by side on the cores (a 224x224 image alone
    keeps two cores only half busy); the results are those of one image at a time. An image that needs tiles is
    refined at once, alone (nothing else is held meanwhile). Results come as they are written, not in order."""
    pending = []
    for job, prepared in _read_ahead(jobs, min(batch_size, READ_AHEAD)):
        if isinstance(prepared, ValueError):
            yield from _flush(pending)
            yield job, prepared
            continue
        if _small(prepared):
            if pending and sum(p.whole for _, p in pending) + prepared.whole > prepared.budget:
                yield from _flush(pending)  # a batch stays within what one image may use (max_memory)
            pending.append((job, prepared))
            if len(pending) >= batch_size:
                yield from _flush(pending)
            continue
        yield from _flush(pending)
        yield job, _outcome(job, lambda: _finish(job, prepared))
    yield from _flush(pending)


def _small(prepared):
    """Whether a prepared image is refined in one piece and small enough to share the cores with others."""
    return prepared.tile is None and prepared.pixels <= ACROSS_MAX_PIXELS


#: What an image read ahead (and its scores) may take decoded: larger ones are read when their turn comes, so that
#: reading ahead never holds a large image (64 MiB: a 640x640 image with 21 float64 scores is 69 MB).
AHEAD_BYTES = 64 << 20
#: Files read ahead at most (one reader thread: a few keep it busy while a batch computes).
READ_AHEAD = 4


def _read_ahead(jobs, depth):
    """``(job, _Prepared or ValueError)`` for each job, in order, up to ``depth`` of the following ones read on a
    helper thread meanwhile (decoding a 224x224 PNG and its scores takes a few ms of the ~15 ms of its mean field).
    Images whose headers promise more than :data:`AHEAD_BYTES` are read (and their errors reported) only when their
    turn comes, with the full memory bound."""
    jobs = iter(jobs)
    ahead = collections.deque()
    reader = ThreadPoolExecutor(1, thread_name_prefix="crfcore-refine-read")
    try:
        while True:
            while len(ahead) < depth:
                job = next(jobs, None)
                if job is None:
                    break
                ahead.append((job, reader.submit(_read_small, job)))
            if not ahead:
                return
            job, read = ahead.popleft()
            prepared = read.result()
            if prepared is None:  # large, or failed: read here with the full bound (and its own error)
                prepared = _outcome(job, functools.partial(_prepare, job))
            yield job, prepared
    finally:  # also when the run stops early (Ctrl-C, a full disk): the reads not started never are
        reader.shutdown(wait=False, cancel_futures=True)


def _read_small(job):
    """:func:`_prepare` within :data:`AHEAD_BYTES`, or None (too large to read ahead, or failed)."""
    try:
        return _prepare(job, AHEAD_BYTES)
    except (ValueError, MemoryError):
        return None


def _flush(pending):
    """Refine the waiting small images (one :func:`crfcore.meanfield` batch per shape and label count) and empty
    the list; yields as :func:`refine_jobs`."""
    waiting, out = list(pending), {}
    pending.clear()
    groups = {}
    for k, (job, prepared) in enumerate(waiting):
        try:
            logits = _guarded(job, lambda: prepared.logits(slice(None), slice(None)))
        except ValueError as exc:
            out[k] = exc
            continue
        key = (prepared.image.shape, prepared.image.dtype, logits.shape, logits.dtype)
        groups.setdefault(key, []).append((k, logits))
    for k, exc in out.items():
        yield waiting[k][0], exc
    done = set(out)
    for members in groups.values():
        if len(members) < 2:
            continue
        images = np.stack([np.asarray(waiting[k][1].image) for k, _ in members])
        try:
            q = meanfield(np.stack([lg for _, lg in members]), images, **waiting[members[0][0]][0].options["crf"])
        except (ValueError, MemoryError):  # one image's fault (or too much at once): each alone below says which
            continue
        for i, (k, _) in enumerate(members):  # each written and yielded at once: a full disk stops the run after
            job, prepared = waiting[k]  # the outputs already recorded
            done.add(k)
            yield job, _outcome(job, lambda: _finish(job, prepared, q[i]))
    for k, (job, prepared) in enumerate(waiting):
        if k not in done:
            yield job, _outcome(job, lambda: _finish(job, prepared))


def _outcome(job, fn):
    """``fn()`` (:func:`_guarded`), or the ValueError it raised (a failure of this file)."""
    try:
        return _guarded(job, fn)
    except ValueError as exc:
        return exc


def _guarded(job, fn):
    try:
        return fn()
    except MemoryError:
        raise ValueError(f"{job.image}: memory ran out refining it (other processes may hold what --max-memory "
                         f"counted on); a smaller --max-memory refines it on smaller tiles") from None


class _Prepared(NamedTuple):
    """An image read and checked, its scores open, and the tile size chosen (None: one tile)."""

    image: np.ndarray
    logits: object  # (ys, xs) -> float logits of that slice, checked finite
    n_lab: int
    tile: object
    pixels: int
    whole: float  # the estimated bytes of its mean field in one piece
    budget: int  # the bytes one image's mean field may use (after the label map and the interpreter)


def _prepare(job, read_bytes=None):
    """Read and check a job's image and scores (each refused from its header if it needs more than the memory
    bound, or ``read_bytes`` when less) and choose its tiles."""
    o = job.options
    # what one image may allocate: its decoded pixels and scores are checked against it before they are read
    limit = o["max_memory"] or tiling.default_max_memory(o.get("workers", 1))
    read_limit = limit if read_bytes is None else min(limit, read_bytes)
    try:
        image = imageio.read_image(job.image, max_bytes=read_limit)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {job.image}: {exc}") from None
    try:
        scores, kind = imageio.read_scores(job.scores, o["scores_are"], o["n_labels"], o["gt_prob"],
                                           o["unknown_label"], max_bytes=read_limit,
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

    itemsize = 1 if n_lab <= 256 else 2
    imageio.check_fits(job.image, "image", (w, h), h * w * itemsize, limit)  # the label map, even if tiled
    # the budget for the tiles: what is left after the full-size label map and the interpreter
    budget = limit - h * w * itemsize - tiling.BASELINE_BYTES
    whole = h * w * (tiling.BYTES_PER_PIXEL[0] + tiling.BYTES_PER_PIXEL[1] * n_lab)
    tile = o["tile"] or (None if whole <= budget else tiling.tile_for_memory(max(budget, 1), n_lab, o["overlap"]))
    return _Prepared(image, logits, n_lab, tile, h * w, whole, budget)


def _finish(job, prepared, q=None):
    """Refine a prepared image (on tiles, or from ``q``, its probabilities from a batch) and write its outputs;
    returns its number of pixels."""
    labels_path, probs_path = outputs(job)
    h, w = prepared.image.shape[:2]
    labels = np.empty((h, w), np.uint8 if prepared.n_lab <= 256 else np.uint16)
    probs_file = (imageio.probs_file(probs_path, (h, w, prepared.n_lab)) if probs_path is not None
                  else contextlib.nullcontext())
    try:
        with probs_file as probs:
            if q is None:
                tiling.refine_tiled(prepared.logits, prepared.image, tile=prepared.tile, overlap=job.options["overlap"],
                                    labels_out=labels, probs_out=probs, **job.options["crf"])
            else:
                labels[...] = q.argmax(-1)
                if probs is not None:
                    probs[...] = q
    except ValueError as exc:
        raise ValueError(f"{job.image}: {exc}") from None
    imageio.write_labels(labels_path, labels, prepared.n_lab)
    return h * w
