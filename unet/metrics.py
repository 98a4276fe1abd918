"""Segmentation metrics for binary masks (1 = document, 0 = background)."""

import numpy as np
from scipy import ndimage


def _binary(pred, truth):
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return pred, truth


def dice(pred, truth):
    """2 |P ∩ T| / (|P| + |T|); 1 when both are empty."""
    pred, truth = _binary(pred, truth)
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else 2.0 * np.logical_and(pred, truth).sum() / denom


def iou(pred, truth):
    """|P ∩ T| / |P ∪ T|; 1 when both are empty."""
    pred, truth = _binary(pred, truth)
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else np.logical_and(pred, truth).sum() / union


def pixel_accuracy(pred, truth):
    pred, truth = _binary(pred, truth)
    return float(np.mean(pred == truth))


def island_components(pred, truth):
    """Spurious regions of a prediction, as a label image and a count.

    An island is a connected component (4-connectivity) of the predicted document that touches no true document
    pixel, or a component of the predicted background that touches no true background pixel (a hole punched in
    the document). Returns ``(labels, n)`` with islands numbered 1..n.
    """
    pred, truth = _binary(pred, truth)
    out = np.zeros(pred.shape, dtype=np.int32)
    n = 0
    for region, reference in ((pred, truth), (~pred, ~truth)):
        labels, count = ndimage.label(region)
        if count == 0:
            continue
        touches = ndimage.maximum(reference, labels, index=np.arange(1, count + 1))
        for k in np.flatnonzero(~np.asarray(touches, dtype=bool)) + 1:
            n += 1
            out[labels == k] = n
    return out, n


def islands(pred, truth):
    """The number of spurious islands (see :func:`island_components`)."""
    return island_components(pred, truth)[1]


def summarise(preds, truths):
    """Mean Dice, IoU, pixel accuracy and islands per image over a set of masks."""
    rows = [(dice(p, t), iou(p, t), pixel_accuracy(p, t), islands(p, t)) for p, t in zip(preds, truths)]
    d, i, a, n = (np.array(c, dtype=np.float64) for c in zip(*rows))
    return {"dice": float(d.mean()), "iou": float(i.mean()), "pixel_accuracy": float(a.mean()),
            "islands_per_image": float(n.mean())}
