"""The pipeline's report: a Markdown table of the three methods and figures like the blog's."""

import os

import numpy as np
from PIL import Image, ImageDraw

from .metrics import island_components
from .pipeline import LABELS, METHODS


def _mask_panel(mask, truth, size=None):
    """A mask drawn white on black, its spurious islands in red and circled in blue (as in the blog).

    ``size`` (width, height): the panel's size, the mask scaled to it (nearest) before the circles are drawn, so
    that a one-pixel island stays visible in a photo shown in its own proportions.
    """
    labels, n = island_components(mask, truth)
    rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    rgb[labels > 0] = [230, 40, 40]
    img = Image.fromarray(rgb)
    sx = sy = 1.0
    if size is not None and tuple(size) != img.size:
        sx, sy = size[0] / img.size[0], size[1] / img.size[1]
        img = img.resize(tuple(size), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        r = 4
        draw.ellipse([xs.min() * sx - r, ys.min() * sy - r, (xs.max() + 1) * sx + r, (ys.max() + 1) * sy + r],
                     outline=(40, 90, 255), width=2)
    return img


def figure(data, preds, index, path):
    """One row: image | true mask | U-Net mask | CRF mask (islands highlighted); saved as PNG."""
    truth = data.masks[index].astype(bool)
    panels = [Image.fromarray((data.images[index] * 255).round().astype(np.uint8)),
              Image.fromarray((truth * 255).astype(np.uint8)).convert("RGB")]
    crf_method = next(m for m in ("unet+crf-rnn", "unet+meanfield", "unet+meanfield-defaults") if m in preds)
    for method in ("unet", crf_method):
        panels.append(_mask_panel(preds[method][0][index].astype(bool), truth))
    w, h = panels[0].size
    sheet = Image.new("RGB", (4 * w + 3 * 4, h), (255, 255, 255))
    for k, p in enumerate(panels):
        sheet.paste(p, (k * (w + 4), 0))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sheet.save(path)
    return path


#: The SmartDoc photos of the pictures: one per background (01, 03, 05), three kinds of document.
PICTURE_PHOTOS = ("000", "007", "014")


def picture_indices(data, names=PICTURE_PHOTOS, n=3):
    """The images of the pictures: ``names`` where ``data`` has them all, else ``n`` spread over the set."""
    index = {name: i for i, name in enumerate(data.names)}
    if all(name in index for name in names):
        return [index[name] for name in names]
    return sorted({int(round(k * (len(data) - 1) / max(1, n - 1))) for k in range(min(n, len(data)))})


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def pictures(data, preds, path, *, indices=None, method="unet+crf-rnn", height=180):
    """Photo | U-Net mask with its islands marked | ``method``'s mask, one row per image, saved to ``path``.

    Each panel shows the photo in its own proportions (``data.shapes``, when known) at ``height`` pixels; the
    masks' spurious islands are red and circled in blue, and each mask panel is captioned with its Dice and
    islands against the true mask.
    """
    from . import metrics

    indices = picture_indices(data) if indices is None else list(indices)
    side = data.images.shape[1:3]
    ratio = [(s[1] / s[0]) if data.shapes is not None else side[1] / side[0] for s in
             (data.shapes or [side] * len(data))]
    width = max(int(round(height * ratio[i])) for i in indices)
    gap, head, foot = 6, 22, 18
    titles = ["photo", "U-Net (islands red, circled)", "U-Net + trained CRF-RNN"]
    sheet = Image.new("RGB", (3 * width + 4 * gap, head + len(indices) * (height + foot + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for c, title in enumerate(titles):
        draw.text((gap + c * (width + gap), 4), title, fill=(0, 0, 0), font=font)
    for r, i in enumerate(indices):
        y = head + r * (height + foot + gap)
        size = (width, height)
        truth = data.masks[i].astype(bool)
        photo = Image.fromarray((data.images[i] * 255).round().astype(np.uint8)).resize(size, Image.BILINEAR)
        panels = [(photo, data.names[i])]
        for m in ("unet", method):
            mask = preds[m][0][i].astype(bool)
            n = metrics.islands(mask, truth)
            caption = f"Dice {metrics.dice(mask, truth):.3f}, {n} island{'' if n == 1 else 's'}"
            panels.append((_mask_panel(mask, truth, size), caption))
        for c, (panel, caption) in enumerate(panels):
            x = gap + c * (width + gap)
            sheet.paste(panel, (x, y))
            draw.text((x, y + height + 2), caption, fill=(0, 0, 0), font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def _table(results):
    lines = ["| method | Dice | IoU | pixel accuracy | islands / image | ms / image |", "|---|---|---|---|---|---|"]
    for m in METHODS:
        if m in results:
            r = results[m]
            lines.append(f"| {LABELS[m]} | {r['dice']:.4f} | {r['iou']:.4f} | {r['pixel_accuracy']:.4f} | "
                         f"{r['islands_per_image']:.2f} | {r['ms_per_image']:.1f} |")
    return "\n".join(lines)


def comparison(results, method="unet+crf-rnn"):
    """One sentence: how ``method`` changes Dice and islands relative to the U-Net alone."""
    if method not in results:
        return ""
    base, new = results["unet"], results[method]
    dd = new["dice"] - base["dice"]
    di = new["islands_per_image"] - base["islands_per_image"]
    rel = (100.0 * di / base["islands_per_image"]) if base["islands_per_image"] else 0.0
    return (f"{LABELS[method]} vs the U-Net alone: Dice {base['dice']:.4f} → {new['dice']:.4f} ({dd:+.4f}), "
            f"islands per image {base['islands_per_image']:.2f} → {new['islands_per_image']:.2f} "
            f"({di:+.2f}, {rel:+.0f}%).")


def write(out_dir, sections, *, settings=None, crf_weights=None, n_figures=4):
    """Write ``out_dir/report.md`` and its figures.

    Parameters
    ----------
    out_dir : str
    sections : list of (title, Dataset, results, predictions)
        One table (and figures) per evaluated data set.
    settings : dict, optional
        Run settings to list (epochs, sizes, seeds, timings).
    crf_weights : dict, optional
        The trained CRF layer's matrices.
    """
    os.makedirs(out_dir, exist_ok=True)
    md = ["# U-Net + CRF-RNN receipt segmentation: report", ""]
    if settings:
        md += ["## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()] + [""]
    for title, data, results, preds in sections:
        md += [f"## {title} ({len(data)} images)", "", _table(results), ""]
        for method in METHODS[1:]:
            if method in results:
                md += ["- " + comparison(results, method)]
        md += ["", "Islands: connected components of the predicted document that touch no true document pixel, "
               "plus holes (predicted background that touches no true background). Time per image includes the "
               "U-Net; the CRF-RNN model is timed end to end.", ""]
        worst = np.argsort([-island_components(p, t)[1] for p, t in zip(preds["unet"][0], data.masks)])
        slug = "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")
        if "unet+crf-rnn" in preds:
            rel = f"pictures_{slug}.png"
            pictures(data, preds, os.path.join(out_dir, rel))
            md += ["Three photos: the photo, the U-Net's mask (spurious islands red, circled in blue) and the trained "
                   "CRF-RNN's:", "", f"![pictures]({rel})", ""]
        md += ["Image | true mask | U-Net | CRF (spurious islands in red, circled in blue):", ""]
        for k, i in enumerate(worst[:n_figures]):
            rel = os.path.join("figures", f"{slug}_{k}.png")
            figure(data, preds, int(i), os.path.join(out_dir, rel))
            md += [f"![{data.names[i]}]({rel})", ""]
    if crf_weights:
        md += ["## Trained CRF-RNN weights", ""]
        for name, w in crf_weights.items():
            md += [f"- `{name}`: {np.round(np.asarray(w), 3).tolist()}"]
        md += [""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return path
