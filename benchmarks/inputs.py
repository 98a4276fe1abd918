"""Benchmark inputs: real photographs (scikit-image's bundled samples) with noisy unaries from a reference
segmentation, seeded; and the same unaries on a random-noise image (every pixel its own colour: the hardest case
for the lattice, about two vertices per pixel, as textures and the README's quick start)."""

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name, size):
    """A bundled sample photo resized to ``(size, size, 3)`` uint8."""
    from skimage import data, transform

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = transform.resize(img[..., :3], (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def reference_segmentation(image, n_labels, seed=0):
    """A plausible segmentation of ``image``: Otsu's threshold for 2 labels, k-means on colour and position for
    more (computed on a 64x64 thumbnail, then upsampled)."""
    from scipy.cluster.vq import kmeans2
    from skimage import filters, transform

    if n_labels == 2:
        grey = image.mean(-1)
        return (grey > filters.threshold_otsu(grey)).astype(np.int64)
    small = transform.resize(image, (64, 64), order=1, anti_aliasing=True, preserve_range=True)
    yy, xx = np.mgrid[0:64, 0:64]
    feats = np.concatenate([small.reshape(-1, 3) / 255.0, np.stack([yy.ravel(), xx.ravel()], 1) / 64.0 * 0.5], 1)
    _, labels = kmeans2(feats, n_labels, seed=seed, minit="++")
    labels = labels.reshape(64, 64)
    h, w = image.shape[:2]
    return labels[(np.arange(h) * 64) // h][:, (np.arange(w) * 64) // w]


def noisy_logits(reference, n_labels, seed=0, strength=2.0, noise=1.5):
    """Logits that favour ``reference`` by ``strength`` with Gaussian noise: a network's plausible output."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, noise, size=reference.shape + (n_labels,))
    np.put_along_axis(logits, reference[..., None], np.take_along_axis(logits, reference[..., None], -1) + strength,
                      axis=-1)
    return logits.astype(np.float32)


def case(size, n_labels, photo_name="astronaut", seed=0):
    """``(image uint8 (size, size, 3), logits float32 (size, size, n_labels))``."""
    img = photo(photo_name, size)
    ref = reference_segmentation(img, n_labels, seed)
    return img, noisy_logits(ref, n_labels, seed)


#: The kinds of input of the standard table's rows.
INPUTS = ("photo", "noise")


def noise_case(size, n_labels, seed=0):
    """:func:`case`'s logits on a uniformly random RGB image of the same size (seeded)."""
    _, logits = case(size, n_labels, seed=seed)
    image = np.random.default_rng(1000 + seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return image, logits


def input_case(kind, size, n_labels):
    """``(image, logits)`` of a row: ``kind`` is ``"photo"`` (:func:`case`) or ``"noise"`` (:func:`noise_case`)."""
    if kind not in INPUTS:
        raise ValueError(f"unknown input {kind!r}; choose from {INPUTS}")
    return case(size, n_labels) if kind == "photo" else noise_case(size, n_labels)
