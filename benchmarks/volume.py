"""3-D rows of ``python -m benchmarks``: a medical-like volume through crfcore (``spatial_dims=3``) and through the C++
densecrf's generic ``DenseCRF`` given the same 3-D features (what SimpleCRF's ``densecrf3d``, which MONAI users run,
does with the same code).

The volume is synthetic but shaped like a scan: smooth blobs of tissue (a thresholded smooth random field) in one
intensity channel with Gaussian noise, and noisy unaries that favour the blobs. Both peers get the features that
crfcore builds (``p / theta_gamma`` and ``(p / theta_alpha, I / theta_beta)``, float32 for densecrf), densecrf's
default diagonal kernels and symmetric normalisation, so they solve the same model.
"""

import numpy as np

import crfcore
from crfcore.features import bilateral_features, spatial_features

from .peers import dcrf
from .timing import _with_threads, timed_interleaved

#: The volume's kernels: widths in voxels and intensity units, weights as crfcore's defaults.
VOLUME_KERNELS = dict(theta_gamma=3.0, w_spatial=3.0, theta_alpha=10.0, theta_beta=20.0, w_bilateral=5.0)


def volume_case(shape, n_labels=2, seed=0):
    """``(volume uint8 shape + (1,), logits float32 shape + (n_labels,))``: blobs of "tissue" in noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=tuple(s // 16 + 2 for s in shape))
    field = ndimage.zoom(coarse, 16, order=3)[tuple(slice(0, s) for s in shape)]
    levels = np.quantile(field, np.linspace(0, 1, n_labels + 1)[1:-1])
    truth = np.searchsorted(levels, field)
    volume = 60 + 120 * truth / max(n_labels - 1, 1) + rng.normal(0, 25, size=shape)
    logits = rng.normal(0, 1.5, size=shape + (n_labels,))
    np.put_along_axis(logits, truth[..., None], np.take_along_axis(logits, truth[..., None], -1) + 1.5, axis=-1)
    return np.clip(volume, 0, 255).astype(np.uint8)[..., None], logits.astype(np.float32)


def ours(logits, volume, n_iter):
    return crfcore.meanfield(logits, volume, n_iter=n_iter, spatial_dims=3, **VOLUME_KERNELS)


def densecrf(logits, volume, n_iter):
    """densecrf's generic ``DenseCRF`` with crfcore's 3-D features (float32, one row per feature)."""
    shape, n_lab = logits.shape[:-1], logits.shape[-1]
    k = VOLUME_KERNELS
    fs = spatial_features(shape, k["theta_gamma"])
    fb = bilateral_features(volume.reshape(-1, 1), shape, k["theta_alpha"], k["theta_beta"])
    d = dcrf.DenseCRF(int(np.prod(shape)), n_lab)
    d.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(-1, n_lab).T))
    d.addPairwiseEnergy(np.ascontiguousarray(fs.T, dtype=np.float32), compat=k["w_spatial"])
    d.addPairwiseEnergy(np.ascontiguousarray(fb.T, dtype=np.float32), compat=k["w_bilateral"])
    return np.array(d.inference(n_iter)).T.reshape(logits.shape)


def bench_volume(shape, n_lab, n_iter, repeats, threads):
    """One 3-D row: crfcore on all threads and on one, densecrf, interleaved (median and spread in ms), and the
    agreement of the outputs."""
    volume, logits = volume_case(shape, n_lab)
    row = {"shape": list(shape), "labels": n_lab, "iterations": n_iter, "voxels": int(np.prod(shape)),
           "kernels": VOLUME_KERNELS}
    q_ours = ours(logits, volume, n_iter)  # warm-up, and the output compared below
    fns = [_with_threads(threads, lambda: ours(logits, volume, n_iter)),
           _with_threads(1, lambda: ours(logits, volume, n_iter))]
    if dcrf is not None:
        fns.append(lambda: densecrf(logits, volume, n_iter))
    timings = timed_interleaved(fns, repeats)
    for key, (med, lo, hi) in zip(("crfcore", "crfcore_1t", "densecrf"), timings):
        row.update({f"{key}_ms": 1e3 * med, f"{key}_min_ms": 1e3 * lo, f"{key}_max_ms": 1e3 * hi})
    if dcrf is not None:
        q_ref = densecrf(logits, volume, n_iter)
        row["speedup"] = row["densecrf_ms"] / row["crfcore_ms"]
        row["speedup_1t"] = row["densecrf_ms"] / row["crfcore_1t_ms"]
        row["max_abs_dq"] = float(np.abs(q_ours - q_ref).max())
        row["label_agreement_pct"] = float(100.0 * np.mean(q_ours.argmax(-1) == q_ref.argmax(-1)))
    return row


def report(rows):
    lines = ["3-D volumes (spatial_dims=3, one intensity channel; densecrf's DenseCRF with the same features):"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        line = (f"  {shape} L={r['labels']} {r['iterations']} it: crfcore {r['crfcore_ms']:.0f} ms, 1 thread "
                f"{r['crfcore_1t_ms']:.0f} ms")
        if "densecrf_ms" in r:
            line += (f", densecrf {r['densecrf_ms']:.0f} ms: x{r['speedup']:.2f} (1 thread x{r['speedup_1t']:.2f}), "
                     f"max|dQ| {r['max_abs_dq']:.1e}, labels agree {r['label_agreement_pct']:.3f} %")
        lines.append(line)
    return "\n".join(lines)
