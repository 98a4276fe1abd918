"""The documentation's figures, generated from data and results, never drawn by hand.

- ``speed_plot``: crfcore and densecrf over image sizes, from a benchmark results file (drawn at every docs build).
- ``before_after``: pydensecrf's example photos with their sparse annotations and crfcore's refined labels
  (``python docs/scripts/figures.py before-after [EXAMPLES]``; the examples are ../shared/data/pydensecrf-examples,
  MIT-licensed, see docs/_static/figures/SOURCE.md). It runs pydensecrf's ``examples/inference.py`` through
  ``crfcore.pydensecrf``, the same parameters.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(os.path.dirname(HERE), "_static", "figures")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speed_plot(result, path):
    """Milliseconds per call against pixels, crfcore and densecrf, one line per (labels, iterations), photo rows."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    result = dict(result, rows=[r for r in result["rows"] if r.get("input", "photo") == "photo"])
    keys = sorted({(r["labels"], r["iterations"]) for r in result["rows"]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (labels, iters) in enumerate(keys):
        rows = sorted((r for r in result["rows"] if (r["labels"], r["iterations"]) == (labels, iters)),
                      key=lambda r: r["pixels"])
        px = [r["pixels"] / 1e6 for r in rows]
        ax.plot(px, [r["crfcore_ms"] for r in rows], "o-", color=colours[k % len(colours)],
                label=f"crfcore, L={labels}, {iters} it")
        if all("densecrf_ms" in r for r in rows):
            ax.plot(px, [r["densecrf_ms"] for r in rows], "s--", color=colours[k % len(colours)], alpha=0.7,
                    label=f"densecrf, L={labels}, {iters} it")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("megapixels")
    ax.set_ylabel("ms per call (median)")
    cores = result.get("meta", {}).get("machine", {}).get("cores", "?")
    ax.set_title(f"Mean-field inference, {cores} cores (solid: crfcore, dashed: densecrf)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def before_after(examples, path=None):
    """Photo, annotation and crfcore's labels for each of pydensecrf's three examples, in one figure."""
    import crfcore.pydensecrf.densecrf as dcrf
    from crfcore.pydensecrf.utils import unary_from_labels

    plt = _pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(9, 7.2), dpi=100)
    for i in range(3):
        img = _read_png(os.path.join(examples, f"im{i + 1}.png"))
        anno = _read_png(os.path.join(examples, f"anno{i + 1}.png"))
        # pydensecrf's examples/inference.py: colours of the annotation are the labels, black is unknown
        packed = anno[..., 0].astype(np.uint32) + (anno[..., 1].astype(np.uint32) << 8) + \
            (anno[..., 2].astype(np.uint32) << 16)
        colours, labels = np.unique(packed, return_inverse=True)
        has_unknown = 0 in colours
        if has_unknown:
            colours = colours[1:]
        n_labels = len(colours)
        labels = labels.reshape(packed.shape)
        h, w = labels.shape
        d = dcrf.DenseCRF2D(w, h, n_labels)
        d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=0.7, zero_unsure=has_unknown))
        d.addPairwiseGaussian(sxy=(3, 3), compat=3, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
        d.addPairwiseBilateral(sxy=(80, 80), srgb=(13, 13, 13), rgbim=img, compat=10, kernel=dcrf.DIAG_KERNEL,
                               normalization=dcrf.NORMALIZE_SYMMETRIC)
        out = np.argmax(d.inference(5), axis=0).reshape(h, w)
        rgb = np.stack([(colours >> s) & 255 for s in (0, 8, 16)], -1).astype(np.uint8)
        for ax, shown, title in zip(axes[i], (img, anno, rgb[out]),
                                    ("photo", "annotation (black: unknown)", "crfcore's labels (5 iterations)")):
            ax.imshow(shown)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = path or os.path.join(FIGURES, "before-after.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if sys.argv[1:2] == ["before-after"]:
        default = os.path.join(os.path.dirname(HERE), "..", "..", "shared", "data", "pydensecrf-examples")
        print(before_after(sys.argv[2] if len(sys.argv) > 2 else default))
    else:
        raise SystemExit("usage: python docs/scripts/figures.py before-after [EXAMPLES]")
