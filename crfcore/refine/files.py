"""Refine whole data sets: ``crfcore.refine_files`` and ``crfcore refine``.

For every image with matching scores (by file stem) the dense CRF's mean field is run and ``OUT/<stem>.png`` written
(the label index as the pixel value, with a palette for viewing), plus ``OUT/<stem>.npy`` float16 probabilities on
request. Outputs are written atomically and a rerun skips what is done, so an interrupted run just continues. A bad
input (unreadable image, size mismatch, NaN scores, wrong label count) is reported with its file name and skipped;
the others are still written, and ``OUT/failures.csv`` lists the failures. Inputs are never modified. An input whose
header promises more pixels than ``max_memory`` allows is such a failure, found before it is decoded. An output
that cannot be written (a full disk) stops the run with that error; what was finished stays, and a rerun continues.
One run at a time writes into an output folder: a second one is refused (``OUT/.crfcore-refine.lock``).

Images too large for ``max_memory`` are refined on overlapping tiles (:mod:`crfcore.refine.tiling`); a Dask cluster spreads
the files over many processes or machines (:mod:`crfcore.refine.cluster`).
"""

import contextlib
import csv
import glob
import os
import socket
import sys
import time
import warnings
from typing import NamedTuple

import numba
import numpy as np

from ..params import DEFAULTS, check_params
from . import imageio, tiling
from .job import Job, outputs, refine_jobs
from .manifest import Manifest

SCORE_KINDS = ("probs", "logits")
#: The file a run holds locked (``fcntl.flock``) in its output folder while it writes there.
LOCK = ".crfcore-refine.lock"
#: meanfield's defaults: every one is a flag of ``crfcore refine``.
CRF_DEFAULTS = {k: v for k, v in DEFAULTS.items() if k not in ("compat", "spatial_dims")}


class Summary(NamedTuple):
    """What a run did: ``done`` refined now, ``skipped`` already done, ``failed`` as ``(file, message)``."""

    done: int
    skipped: int
    failed: list
    seconds: float
    pixels: int

    @property
    def images_per_second(self):
        return self.done / self.seconds if self.seconds > 0 else 0.0


def list_files(source, exts, what):
    """The files of a folder, a glob pattern or a single file with one of ``exts``, sorted."""
    if os.path.isdir(source):
        files = [os.path.join(source, f) for f in os.listdir(source)]
    elif any(c in source for c in "*?["):
        files = glob.glob(source)
    elif os.path.isfile(source):
        files = [source]
    else:
        raise FileNotFoundError(f"{what} {source!r}: no such folder, file or glob pattern")
    files = sorted(f for f in files if f.lower().endswith(exts) and not os.path.basename(f).startswith("."))
    if not files:
        raise FileNotFoundError(f"{what} {source!r} holds no {'/'.join(e.lstrip('.') for e in exts)} files")
    return files


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="refining", unit="img", dynamic_ncols=True)


def _check_out_apart(out, inputs):
    """Refuse an output folder that holds input files: outputs (``<stem>.png``, ``<stem>.npy``) could replace them,
    and a rerun would read its own outputs as inputs. Inputs are never modified."""
    folder = os.path.realpath(out)
    shared = [f for f in inputs if os.path.dirname(os.path.realpath(f)) == folder]
    if shared:
        raise ValueError(f"`out` {out!r} holds input files ({', '.join(map(os.path.basename, shared[:3]))}"
                         f"{', ...' if len(shared) > 3 else ''}); write the outputs to another folder")


def _check_score_options(score_files, unknown_label):
    arrays = [f for f in score_files if not f.lower().endswith(".png")]
    if unknown_label is not None and arrays:
        raise ValueError(f"`unknown_label` (--unknown-label) applies to .png label maps only, but SCORES holds arrays "
                         f"({os.path.basename(arrays[0])}); leave it out for .npy/.npz scores")


def _labels_over_run(score_files, unknown_label, max_bytes):
    """The number of labels over every label map of the run and where it came from, in words (None when the scores
    are arrays: each has its L)."""
    maps = [f for f in score_files if f.lower().endswith(".png")]
    if not maps:
        return None, None
    top, where = -1, None
    for f in maps:
        try:
            labels = imageio.read_label_map(f, max_bytes)
        except (OSError, ValueError):
            continue  # reported with its name when its job runs
        values = labels[labels != unknown_label] if unknown_label is not None else labels
        largest = int(values.max()) - (1 if unknown_label == 0 else 0) if values.size else -1
        if largest > top:
            top, where = largest, f
    if top < 0:
        return None, None
    return max(top + 1, 2), f"the run's label maps: the largest label is {top} in {os.path.basename(where)}"


class OutputBusy(OSError):
    """The output folder is being written by another ``crfcore refine`` run."""


@contextlib.contextmanager
def _only_run(out):
    """Hold ``OUT/.crfcore-refine.lock`` for the run (an advisory ``flock``, released when the process ends, even
    killed); refuse with :class:`OutputBusy`, naming the holder, when another run holds it. Without ``fcntl``
    (Windows) runs are not kept apart."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX here
        yield
        return
    fd = os.open(os.path.join(out, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
            raise OutputBusy(f"`out` {out!r} is being written by another crfcore refine ({holder}); wait for it to "
                             f"finish (a rerun then skips what it did) or write to another folder") from None
        except OSError as exc:  # a file system without locks (some network and FUSE ones): go on, and say so
            warnings.warn(f"cannot lock `out` {out!r} ({exc.strerror}): a second run into it would not be refused",
                          RuntimeWarning, stacklevel=4)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def make_jobs(image_files, score_files, out, options):
    """Pair every image with its scores by stem; images without scores are failures."""
    by_stem = {}
    for f in score_files:
        by_stem.setdefault(imageio.stem(f), []).append(f)
    jobs, failed = [], []
    for f in image_files:
        found = by_stem.get(imageio.stem(f), [])
        if len(found) != 1:
            failed.append((f, "no scores with its stem" if not found else f"several scores with its stem: {found}"))
            continue
        jobs.append(Job(f, found[0], out, options))
    stems = [imageio.stem(f) for f in image_files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"IMAGES has several files with the same stem (outputs would collide): {dupes[:5]}")
    return jobs, failed


def refine_files(images, scores, out, *, scores_are="probs", n_labels=None, gt_prob=0.7, unknown_label=None,
                 save_probs=False, overwrite=False, tile=None, overlap=tiling.DEFAULT_OVERLAP, max_memory=None,
                 dask=None, progress=True, **crf):
    """Refine every image of ``images`` with its scores from ``scores``, writing the results into ``out``.

    Parameters
    ----------
    images : str
        A folder, a glob pattern or a file: PNG, JPEG or TIFF (8/16-bit, grey, RGB, more channels in TIFF).
    scores : str
        A folder, glob or file of per-pixel scores matched by stem: ``.npy``/``.npz`` ``(H, W, L)`` arrays (channels
        last) or ``.png`` label maps.
    out : str
        Output folder (made if absent).
    scores_are : {"probs", "logits"}
        What the arrays hold.
    n_labels : int, optional
        The number of labels; checked against every file. Without it, label maps get the largest label over the
        whole run plus one (the same L for every file), arrays their own last axis.
    gt_prob, unknown_label
        For label maps: the probability of the given label (pydensecrf's ``unary_from_labels``) and the value that
        means "unknown" (uniform; None: no such value; 0: labels are 1..L as pydensecrf's ``zero_unsure``).
    save_probs : bool
        Also write ``<stem>.npy`` float16 probabilities ``(H, W, L)``.
    overwrite : bool
        Redo every image. Without it, a rerun skips the images whose outputs were written by a run with the same
        options from the same inputs (recorded in ``OUT/.crfcore-refine.jsonl``) and redoes the others, so it
        continues an interrupted run. ``out`` must not hold input files (a ValueError before any work), nor be
        written by another run at the same time (:class:`OutputBusy`, an OSError, before any work).
    tile, overlap, max_memory
        Tile interior and margin in pixels (``tile`` at least ``overlap``); without ``tile``, images whose mean field
        would need more than ``max_memory`` bytes (default: a quarter of RAM, shared between workers) are tiled
        automatically. An input that would need more than ``max_memory`` to decode (read from its header: a
        decompression bomb, a PNG too large) is a failure of its file.
    dask : str, optional
        A ``dask.distributed`` scheduler address, or ``"local"`` / ``"local:N"`` for a local cluster of N processes.
    progress : bool
    crf
        :func:`crfcore.meanfield`'s parameters (its defaults where absent).

    Returns
    -------
    Summary
    """
    if scores_are not in SCORE_KINDS:
        raise ValueError(f"`scores_are` must be one of {SCORE_KINDS}, got {scores_are!r}")
    unknown = set(crf) - set(CRF_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown CRF parameter(s) {sorted(unknown)}; refine_files takes {sorted(CRF_DEFAULTS)}")
    params = dict(CRF_DEFAULTS, **crf)
    check_params(2, compat=None, spatial_dims=2, n_channels=1 if np.ndim(params["theta_beta"]) == 0 else np.size(
        params["theta_beta"]), **params)  # bad parameters fail now, not once per file
    for value, name in ((tile, "tile"), (max_memory, "max_memory")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise ValueError(f"`overlap` must be an int >= 0, got {overlap!r}")
    if tile is not None and tile < overlap:
        raise ValueError(f"`tile` (--tile) {tile} is smaller than its margin `overlap` (--overlap) {overlap}: each tile "
                         f"would refine up to {tile + 2 * overlap}x{tile + 2 * overlap} pixels to keep {tile}x{tile}; "
                         f"pass a tile of at least {overlap} pixels (e.g. 1024) or a smaller overlap")
    options = dict(scores_are=scores_are, n_labels=n_labels, gt_prob=gt_prob, unknown_label=unknown_label,
                   save_probs=bool(save_probs), tile=tile, overlap=int(overlap), max_memory=max_memory, crf=params)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"`out` {out!r} is a file, not a folder")
    image_files = list_files(images, imageio.IMAGE_EXTS, "IMAGES")
    score_files = list_files(scores, imageio.SCORE_EXTS, "SCORES")
    _check_out_apart(out, image_files + score_files)  # before anything is written or removed there
    _check_score_options(score_files, unknown_label)
    if n_labels is None:  # one L for the whole run: label maps without their top class must not get fewer
        options["n_labels"], options["n_labels_from"] = _labels_over_run(
            score_files, unknown_label, max_memory or tiling.default_max_memory())
    else:
        options["n_labels_from"] = "`n_labels` (--n-labels)"
    os.makedirs(out, exist_ok=True)
    with _only_run(out):
        return _run(out, options, image_files, score_files, overwrite, dask, progress)


def _run(out, options, image_files, score_files, overwrite, dask, progress):
    imageio.remove_stale_partials(out)  # what a killed run was writing
    jobs, failed = make_jobs(image_files, score_files, out, options)
    manifest = Manifest(out)
    todo = [j for j in jobs if overwrite or not manifest.is_done(j, *outputs(j))]
    skipped = len(jobs) - len(todo)
    t0 = time.perf_counter()
    bar = _progress(len(todo), progress)
    if dask:
        from .cluster import run_jobs
    else:
        run_jobs = _run_local
    done, pixels = 0, 0
    try:
        for job, result in run_jobs(todo, dask):
            if isinstance(result, Exception):
                failed.append((job.image, str(result)))
            else:
                done += 1
                pixels += result
                manifest.add(job, *outputs(job))
            if bar is not None:
                bar.update(1)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{done / elapsed:.1f} img/s, {len(failed)} failed" if elapsed else "")
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: the error that stopped the run is the one to report
            _write_failures(out, failed)
        raise
    else:
        _write_failures(out, failed)
    finally:
        if bar is not None:
            bar.close()
    return Summary(done, skipped, failed, time.perf_counter() - t0, pixels)


def _run_local(jobs, _):
    # small images of one shape in batches of two per thread: side by side on the cores (job.refine_jobs)
    yield from refine_jobs(jobs, batch_size=2 * numba.get_num_threads())


def _write_failures(out, failed):
    path = os.path.join(out, "failures.csv")
    if not failed:
        if os.path.exists(path):
            os.remove(path)  # a rerun that fixed everything leaves no stale list
        return
    with imageio.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "error"])
            writer.writerows(failed)


def print_summary(summary, out, file=None):
    file = sys.stdout if file is None else file
    rate = f", {summary.images_per_second:.2f} images/s" if summary.done else ""
    print(f"refined {summary.done} image(s) in {summary.seconds:.1f} s{rate}; {summary.skipped} already done; "
          f"{len(summary.failed)} failed", file=file)
    if summary.failed:
        for f, msg in summary.failed[:10]:
            print(f"  failed: {f}: {msg}", file=file)
        print(f"  the list: {os.path.join(out, 'failures.csv')}", file=file)
