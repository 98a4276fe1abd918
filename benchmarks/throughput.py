"""Throughput rows of ``python -m benchmarks``: a data set's worth of images, the way a user would run each peer.

* crfcore: one process, the batch given to ``crfcore.meanfield`` at once (leading axis), all threads; and
  ``crfcore.refine_files`` over a folder of the same images as PNG with ``.npy`` probabilities (reading and writing
  included, start-up not);
* densecrf: single-threaded, so one process per core, all at once (``multiprocessing``'s spawn), each refining
  the photo cases in turn for a fixed time.

Images/s of each; the ratio is crfcore's over all the densecrf processes together.
"""

import os
import tempfile
import time

import numpy as np

import crfcore

from . import processes
from .peers import dcrf


def _batch(size, n_lab, batch):
    cases = [processes._photo_inputs(size, n_lab, k) for k in range(min(batch, 8))]  # 8 distinct, repeated
    logits = np.stack([cases[k % len(cases)][0] for k in range(batch)])
    images = np.stack([cases[k % len(cases)][1] for k in range(batch)])
    return logits, images


def _refine_folder(size, n_lab, n_iter, n_images, repeats):
    """Images/s of ``crfcore.refine_files`` over a folder of ``n_images`` PNGs and ``.npy`` probabilities (the
    best of ``repeats`` runs after a warm-up run on the same folder; ``overwrite`` redoes every image)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        img_dir, sc_dir, out = (os.path.join(tmp, d) for d in ("images", "scores", "out"))
        os.makedirs(img_dir)
        os.makedirs(sc_dir)
        for k in range(n_images):
            logits, image = processes._photo_inputs(size, n_lab, k % 8)
            Image.fromarray(image).save(os.path.join(img_dir, f"{k:04d}.png"))
            q = np.exp(logits - logits.max(-1, keepdims=True))
            np.save(os.path.join(sc_dir, f"{k:04d}.npy"), (q / q.sum(-1, keepdims=True)).astype(np.float32))
        best = float("inf")
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            crfcore.refine_files(img_dir, sc_dir, out, overwrite=True, progress=False, n_iter=n_iter)
            best = min(best, time.perf_counter() - t0)
        return n_images / best


def bench_throughput(size, n_lab, n_iter, batch, repeats, seconds, with_refine=False):
    """One throughput row: crfcore's batch (and folder) against ``os.cpu_count()`` densecrf processes at once."""
    n_proc = os.cpu_count() or 1
    row = {"size": size, "labels": n_lab, "iterations": n_iter, "batch": batch, "densecrf_processes": n_proc}
    logits, images = _batch(size, n_lab, batch)
    crfcore.meanfield(logits[:2], images[:2], n_iter=n_iter)  # warm-up (kernels, the spatial kernel's cache)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        crfcore.meanfield(logits, images, n_iter=n_iter)
        best = min(best, time.perf_counter() - t0)
    row["crfcore_batch_images_per_s"] = batch / best
    del logits, images
    if with_refine:
        row["crfcore_refine_images"] = batch
        row["crfcore_refine_images_per_s"] = _refine_folder(size, n_lab, n_iter, batch, max(1, repeats - 1))
    if dcrf is not None:
        rates = processes.concurrent("densecrf", n_proc, seconds, spec=(size, n_lab, n_iter))
        row["densecrf_per_process"] = rates
        row["densecrf_images_per_s"] = float(sum(rates))
        row["speedup"] = row["crfcore_batch_images_per_s"] / row["densecrf_images_per_s"]
        if with_refine:
            row["refine_speedup"] = row["crfcore_refine_images_per_s"] / row["densecrf_images_per_s"]
    return row


def report(rows):
    lines = ["throughput (images/s; crfcore one process on all threads, densecrf one process per core at once):"]
    for r in rows:
        line = (f"  batch of {r['batch']} at {r['size']}x{r['size']} L={r['labels']} {r['iterations']} it: crfcore "
                f"meanfield {r['crfcore_batch_images_per_s']:.1f}")
        if "crfcore_refine_images_per_s" in r:
            line += f", crfcore refine (folder of PNG + .npy) {r['crfcore_refine_images_per_s']:.1f}"
        if "densecrf_images_per_s" in r:
            each = " + ".join(f"{x:.1f}" for x in r["densecrf_per_process"])
            line += (f"; densecrf x{r['densecrf_processes']} processes {r['densecrf_images_per_s']:.1f} ({each}): "
                     f"x{r['speedup']:.2f}")
            if "refine_speedup" in r:
                line += f" (refine x{r['refine_speedup']:.2f})"
        lines.append(line)
    return "\n".join(lines)
