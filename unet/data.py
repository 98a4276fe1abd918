"""Data for the pipeline: a folder of images and masks, or the embedded synthetic generator."""

import csv
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from . import synth

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "dev", "test")
#: Synthetic streams: one per split, plus one for the CRF-RNN stage.
STREAMS = SPLITS + ("crf",)


def stream_seed(seed, name):
    """The generator seed of the synthetic stream ``name`` (disjoint streams for one run seed)."""
    return seed * 1000 + STREAMS.index(name)


class Dataset:
    """Images ``(n, size, size, 3)`` float32 in [0, 1], masks ``(n, size, size)`` uint8 in {0, 1}, names."""

    def __init__(self, images, masks, names):
        self.images, self.masks, self.names = images, masks, list(names)

    def __len__(self):
        return len(self.names)

    def subset(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(self.images[idx], self.masks[idx], [self.names[i] for i in idx])


def _load_pair(image_path, mask_path, size):
    img = Image.open(image_path).convert("RGB").resize((size, size), Image.BILINEAR)
    mask = Image.open(mask_path).convert("L").resize((size, size), Image.NEAREST)
    m = np.asarray(mask)
    return np.asarray(img, dtype=np.float32) / 255.0, (m > (127 if m.max() > 1 else 0)).astype(np.uint8)


def load_folder(path, size=224):
    """Load ``path/images/*`` with ``path/masks/<same stem>.png`` (0/255 or 0/1), resized to ``size``.

    Returns
    -------
    Dataset
        Sorted by name. Images whose mask is missing raise a ValueError naming them.
    """
    img_dir, mask_dir = os.path.join(path, "images"), os.path.join(path, "masks")
    if not os.path.isdir(img_dir) or not os.path.isdir(mask_dir):
        raise ValueError(f"{path!r} must contain 'images/' and 'masks/' folders")
    masks = {os.path.splitext(f)[0]: f for f in os.listdir(mask_dir) if f.lower().endswith(IMAGE_EXTS)}
    files = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise ValueError(f"no images in {img_dir!r}")
    missing = [f for f in files if os.path.splitext(f)[0] not in masks]
    if missing:
        raise ValueError(f"no mask in {mask_dir!r} for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    pairs = [_load_pair(os.path.join(img_dir, f), os.path.join(mask_dir, masks[os.path.splitext(f)[0]]), size)
             for f in files]
    images = np.stack([p[0] for p in pairs])
    mask_arr = np.stack([p[1] for p in pairs])
    return Dataset(images, mask_arr, [os.path.splitext(f)[0] for f in files])


def split(dataset, path=None, seed=0, fractions=(0.7, 0.15, 0.15)):
    """``{"train", "dev", "test"} -> Dataset``: from ``path/manifest.csv``'s ``split`` column when it has one,
    else a seeded shuffle in ``fractions``."""
    manifest = None if path is None else os.path.join(path, "manifest.csv")
    if manifest and os.path.exists(manifest):
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "split" in rows[0]:
            key = "id" if "id" in rows[0] else next(iter(rows[0]))
            where = {r[key]: r["split"] for r in rows}
            return {s: dataset.subset([i for i, n in enumerate(dataset.names) if where.get(n) == s]) for s in SPLITS}
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_train = int(round(fractions[0] * len(dataset)))
    n_dev = int(round(fractions[1] * len(dataset)))
    return {"train": dataset.subset(np.sort(order[:n_train])),
            "dev": dataset.subset(np.sort(order[n_train:n_train + n_dev])),
            "test": dataset.subset(np.sort(order[n_train + n_dev:]))}


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


def synthetic_splits(n_train, n_dev, n_test, seed, size=224, progress=None):
    """Disjoint synthetic train/dev/test sets (different seeds per split)."""
    return {name: synthetic(n, stream_seed(seed, name), size, progress=progress)
            for name, n in zip(SPLITS, (n_train, n_dev, n_test))}
