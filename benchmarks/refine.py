"""Measurements behind ``python -m crfcore refine`` (README, "Refining data sets"):

* ``agreement``: labels of tiled mean field against the untiled result at 4096^2, per overlap (a real photo
  upscaled and a synthetic scene), which chose :data:`crfcore.refine.tiling.DEFAULT_OVERLAP`;
* ``gigapixel``: time and peak resident memory of ``python -m crfcore refine`` on a 20000^2 RGB TIFF with L=2
  scores (a fresh process, default ``--max-memory``);
* ``throughput``: a folder of 200 224^2 images and one of 40 1024^2 images, in one process (all threads) and on a
  Dask LocalCluster of 2 processes x 1 thread.

``python -m benchmarks.refine [agreement|gigapixel|throughput ...] [--json PATH]``
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from crfcore import meanfield
from crfcore.refine import tiling

from .inputs import case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_scene(size, n_lab=2, seed=0):
    """Blobs of colour with texture and noisy unaries: a synthetic remote-sensing-like scene."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(size // 64 + 1, size // 64 + 1))
    field = ndimage.zoom(coarse, 64, order=3)[:size, :size]
    truth = (field > 0).astype(np.int64)
    colours = np.array([[70, 110, 60], [150, 130, 100]])
    image = colours[truth] + rng.normal(0, 25, size=(size, size, 3))
    logits = rng.normal(0, 1.5, size=(size, size, n_lab)).astype(np.float32)
    logits[..., 1] += 1.0 * truth
    logits[..., 0] += 1.0 * (1 - truth)
    return np.clip(image, 0, 255).astype(np.uint8), logits


def photo_scene(size, n_lab=2):
    image, logits = case(512, n_lab)
    from scipy import ndimage

    zoom = size / 512
    image = np.clip(ndimage.zoom(image, (zoom, zoom, 1), order=1), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(1)
    base = ndimage.zoom(logits, (zoom, zoom, 1), order=0)
    return image, (base + rng.normal(0, 1.0, size=base.shape)).astype(np.float32)


def agreement(size=4096, tile=1024, overlaps=(0, 32, 64, 128, 256), progress=print):
    out = []
    for name, make in (("photo (astronaut, upscaled)", photo_scene), ("synthetic scene", synthetic_scene)):
        image, logits = make(size)
        t0 = time.perf_counter()
        whole = meanfield(logits, image).argmax(-1)
        t_whole = time.perf_counter() - t0
        row = {"scene": name, "size": size, "tile": tile, "untiled_s": t_whole, "agreement_pct": {}, "tiled_s": {}}
        for ov in overlaps:
            t0 = time.perf_counter()
            labels = tiling.refine_tiled(logits, image, tile=tile, overlap=ov)
            row["tiled_s"][ov] = time.perf_counter() - t0
            row["agreement_pct"][ov] = float(100 * np.mean(labels == whole))
            progress(f"  {name}: overlap {ov}: {row['agreement_pct'][ov]:.3f} % of labels as untiled")
        out.append(row)
    return out


def _write_gigapixel(folder, size):
    """A ``size^2`` RGB TIFF (written in strips) and L=2 float32 probabilities as ``.npy``, without holding either
    whole in memory."""
    import tifffile

    img_dir, sc_dir = os.path.join(folder, "images"), os.path.join(folder, "scores")
    os.makedirs(img_dir)
    os.makedirs(sc_dir)
    strip = 1000
    probs = np.lib.format.open_memmap(os.path.join(sc_dir, "big.npy"), mode="w+", dtype=np.float32,
                                      shape=(size, size, 2))

    def strips():
        for y0 in range(0, size, strip):
            image, logits = synthetic_scene(max(strip, 1024), seed=y0)
            h = min(strip, size - y0)
            tiles = int(np.ceil(size / image.shape[1]))
            row = np.concatenate([image[:h]] * tiles, axis=1)[:, :size]
            lg = np.concatenate([logits[:h]] * tiles, axis=1)[:, :size]
            q = np.exp(lg - lg.max(-1, keepdims=True))
            probs[y0:y0 + h] = q / q.sum(-1, keepdims=True)
            yield row

    tifffile.imwrite(os.path.join(img_dir, "big.tif"), strips(), shape=(size, size, 3), dtype=np.uint8,
                     rowsperstrip=strip, photometric="rgb", bigtiff=True)
    probs.flush()
    del probs
    return img_dir, sc_dir


def gigapixel(size=20000, progress=print):
    with tempfile.TemporaryDirectory(dir=os.environ.get("CRFCORE_BENCH_TMP")) as tmp:
        progress(f"  writing a {size}x{size} RGB TIFF and its scores...")
        img_dir, sc_dir = _write_gigapixel(tmp, size)
        out_dir = os.path.join(tmp, "out")
        code = ("import resource, sys, time; from crfcore.cli import main; t = time.perf_counter(); "
                f"rc = main(['refine', {img_dir!r}, '--scores', {sc_dir!r}, '--out', {out_dir!r}, '--no-progress']); "
                "print('TIME', time.perf_counter() - t); "
                "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
        progress("  refining it in a fresh process...")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        seconds = float(proc.stdout.split("TIME")[1].split()[0])
        peak_kib = int(proc.stdout.split("PEAK")[1].split()[0])
        from crfcore.refine.tiling import default_max_memory, total_memory

        return {"size": size, "labels": 2, "seconds": seconds, "peak_mib": peak_kib / 1024,
                "max_memory_mib": default_max_memory() / 2**20, "ram_mib": total_memory() / 2**20}


def _folder(tmp, n, size, seed=0):
    from PIL import Image

    img_dir, sc_dir = os.path.join(tmp, f"i{size}"), os.path.join(tmp, f"s{size}")
    os.makedirs(img_dir)
    os.makedirs(sc_dir)
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    for i in range(n):
        image, logits = case(size, 2, photo_name=names[i % 4], seed=seed + i)
        Image.fromarray(image).save(os.path.join(img_dir, f"{i:04d}.png"))
        q = np.exp(logits - logits.max(-1, keepdims=True))
        np.save(os.path.join(sc_dir, f"{i:04d}.npy"), (q / q.sum(-1, keepdims=True)).astype(np.float32))
    return img_dir, sc_dir


def throughput(sets=((200, 224), (40, 1024)), progress=print):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, size in sets:
            img_dir, sc_dir = _folder(tmp, n, size)
            row = {"images": n, "size": size}
            for label, dask in (("1 process x all threads", None), ("Dask LocalCluster 2 processes x 1 thread",
                                                                    "local:2")):
                out = os.path.join(tmp, f"out{size}-{bool(dask)}")
                code = ("import time, sys; from crfcore import refine_files; t = time.perf_counter(); "
                        f"s = refine_files({img_dir!r}, {sc_dir!r}, {out!r}, progress=False, dask={dask!r}); "
                        "print('RATE', s.done / (time.perf_counter() - t), s.done)")
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                      env=dict(os.environ, PYTHONPATH=ROOT))
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-2000:])
                rate = float(proc.stdout.split("RATE")[1].split()[0])
                row[label] = rate
                progress(f"  {n} images of {size}^2, {label}: {rate:.2f} images/s (start-up included)")
            rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.refine", description=__doc__.split("\n\n")[0])
    parts = {"agreement": agreement, "gigapixel": gigapixel, "throughput": throughput}
    p.add_argument("what", nargs="*", help=f"which measurements (default all of {', '.join(parts)})")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    unknown = [w for w in args.what if w not in parts]
    if unknown:
        p.error(f"unknown measurement(s) {unknown}; choose from {list(parts)}")
    args.what = args.what or list(parts)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = {}
    for what in args.what:
        log(f"{what}...")
        result[what] = parts[what](progress=log)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
