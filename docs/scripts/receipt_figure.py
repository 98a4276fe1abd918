"""The receipt page's figure, from the pictures ``make demo`` draws (``out/demo/pictures_smartdoc_real_photos.png``).

``python docs/scripts/receipt_figure.py [DEMO_OUT]`` writes ``docs/_static/figures/receipts-smartdoc.png``: three
SmartDoc photos (CC BY 4.0, see docs/figures-source.md), the U-Net's mask with its islands marked and the trained
CRF-RNN's mask, as the demo drew them, re-encoded (a palette of 256 colours) small enough to keep in git: the
masks' one-pixel islands stay sharp, as they would not in a JPEG.
"""

import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TARGET = os.path.join(REPO, "docs", "_static", "figures", "receipts-smartdoc.png")
SOURCE = "pictures_smartdoc_real_photos.png"
#: Kept under this many bytes (git holds every version of a figure).
MAX_BYTES = 300_000


def receipt_figure(demo_out, path=TARGET):
    src = os.path.join(demo_out, SOURCE)
    if not os.path.exists(src):
        raise SystemExit(f"error: no {SOURCE} in {demo_out!r}; run `make demo` (or `python -m unet demo --out "
                         f"{demo_out}`) with the SmartDoc photos present first")
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise SystemExit(f"error: {path} is {size} bytes, more than {MAX_BYTES}; draw the pictures smaller")
    return path, size


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "out", "demo")
    path, size = receipt_figure(out)
    print(f"{path}: {size / 1000:.0f} kB")
