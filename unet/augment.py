"""Training-time augmentation: flips, small rotations, scale, colour jitter, sensor noise (a fresh draw each epoch).

Geometry moves image and mask together (bilinear for the image, nearest for the mask, borders reflected); colour
changes the image alone. For a small real data set these make the difference between memorising and learning.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

#: The default strengths: rotations up to 10 degrees, scale 0.85-1.15, brightness +-0.12, contrast 0.8-1.25,
#: saturation 0.7-1.3, per-channel gains +-6 %, no noise (``noise``: the largest standard deviation of the Gaussian
#: pixel noise, drawn uniformly up to it per image).
DEFAULTS = dict(rotation=10.0, scale=(0.85, 1.15), brightness=0.12, contrast=(0.8, 1.25), saturation=(0.7, 1.3),
                channel_gain=0.06, noise=0.0)


def _geometry(image, mask, angle, zoom, flip_h, flip_v):
    h, w = mask.shape
    if flip_h:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if flip_v:
        image, mask = image[::-1], mask[::-1]
    if angle == 0.0 and zoom == 1.0:
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)
    # output pixel o maps to input centre + R(-angle) (o - centre) / zoom
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / zoom
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - rot @ centre
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        ndimage.affine_transform(image[..., c], rot, offset, output=out[..., c], order=1, mode="reflect")
    warped = ndimage.affine_transform(mask, rot, offset, order=0, mode="reflect")
    return out, warped


def _colour(image, rng, s):
    grey = image.mean(-1, keepdims=True)
    img = grey + (image - grey) * rng.uniform(*s["saturation"])
    img = (img - 0.5) * rng.uniform(*s["contrast"]) + 0.5 + rng.uniform(-s["brightness"], s["brightness"])
    img = img * (1.0 + rng.uniform(-s["channel_gain"], s["channel_gain"], size=3))
    if s["noise"] > 0:
        img = img + rng.normal(0.0, rng.uniform(0.0, s["noise"]), size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def augment_one(image, mask, rng, strength=None):
    """One augmented copy of ``image`` (``(H, W, 3)`` float in [0, 1]) and ``mask`` (``(H, W)`` uint8)."""
    s = dict(DEFAULTS, **(strength or {}))
    image, mask = _geometry(image, mask, rng.uniform(-s["rotation"], s["rotation"]), rng.uniform(*s["scale"]),
                            rng.uniform() < 0.5, rng.uniform() < 0.5)
    return _colour(image, rng, s), mask


def augment(images, masks, seed, strength=None, workers=4):
    """Augmented copies of a batch (``(n, H, W, 3)``, ``(n, H, W)``); sample ``i`` depends on ``(seed, i)`` only."""
    def one(i):
        return augment_one(images[i], masks[i], np.random.default_rng([seed, i]), strength)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # scipy's filters release the GIL
        pairs = list(pool.map(one, range(len(images))))
    if not pairs:
        return images.copy(), masks.copy()
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
