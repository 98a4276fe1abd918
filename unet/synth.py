"""Procedural synthetic photos of receipts and documents on cluttered surfaces, with exact masks.

Each sample is rendered at ``supersample`` times the output size and box-filtered down, like a camera sensor:

1. a surface (wood, tiles, fabric, plain painted or laminated desk, often near paper white, stone, dark, a tinted
   brick, grass or gravel texture, or a photo out of focus), lit unevenly;
2. things on the desk (mug-like ellipses, books, cables, pens, magazines and photo prints), sometimes 1-3 sheets
   of paper beneath the document, each with its thin shadow (background, like SmartDoc's paper stacks);
3. the paper: a texture (text-like lines, a heading, a table, a picture, a barcode) mapped onto a random
   perspective quad with a curl/crumple displacement, a drop shadow on the surface beneath it, and crease shading;
4. often things lying across the paper (pens, markers) and long cables across the whole frame (the mask, like
   SmartDoc's, still covers the paper beneath them);
5. camera effects: a soft shadow across the scene, colour cast, blur, noise and JPEG compression.

Pictures and textures are scikit-image's bundled images (part of its wheel: nothing is downloaded); without
scikit-image the generator draws flat shapes in their place.

The mask is the set of (supersampled) pixels whose inverse-warped coordinates fall on the paper, the very test
that decides where the paper texture is drawn, so it covers the drawn paper exactly.
"""

import io
import threading

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage


def _smooth_noise(rng, h, w, scale, octaves=3):
    """Fractal noise in [0, 1], features about ``scale`` pixels (made coarse, then upsampled: cheap)."""
    out = np.zeros((h, w))
    amp = 1.0
    for o in range(octaves):
        s = max(1.0, scale / 2**o)
        step = max(1, int(s / 2))
        gh, gw = -(-h // step) + 1, -(-w // step) + 1
        coarse = ndimage.gaussian_filter(rng.normal(size=(gh, gw)), s / step, mode="wrap")
        if step > 1:
            coarse = ndimage.zoom(coarse, step, order=1)
        out += amp * coarse[:h, :w]
        amp *= 0.5
    out -= out.min()
    return out / max(out.max(), 1e-9)


#: scikit-image's bundled pictures (shipped inside its wheel: nothing is downloaded): photos for magazine pages,
#: pictures in documents and things on the desk, and grey textures for surfaces.
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
               "colorwheel", "camera", "moon", "coins", "clock")
TEXTURE_NAMES = ("brick", "grass", "gravel")
_LIBRARY = {}
_LIBRARY_LOCK = threading.Lock()


def _library(kind):
    """The bundled pictures of ``kind`` (``"photos"`` or ``"textures"``) as float32 RGB in [0, 1], loaded once;
    an empty list where scikit-image is missing (the generator then draws flat shapes only)."""
    with _LIBRARY_LOCK:
        if kind not in _LIBRARY:
            try:
                from skimage import data as bundled
            except ImportError:
                bundled = None
            out = []
            for name in (PHOTO_NAMES if kind == "photos" else TEXTURE_NAMES) if bundled else ():
                try:
                    im = np.asarray(getattr(bundled, name)(), dtype=np.float32)
                except Exception:  # a picture this scikit-image version does not bundle
                    continue
                im = im / 255.0 if im.max() > 1 else im
                im = np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im[..., :3]
                out.append(np.ascontiguousarray(im))
            _LIBRARY[kind] = out
        return _LIBRARY[kind]


def _picture(rng, h, w, kind="photos"):
    """A random crop of a bundled picture resized to ``(h, w, 3)``, colours jittered; None without scikit-image."""
    pics = _library(kind)
    if not pics or h < 2 or w < 2:
        return None
    pic = pics[int(rng.integers(len(pics)))]
    ph, pw = pic.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    ch = max(2, int(min(ph, pw * h / w) * scale))
    cw = max(2, int(min(pw, ch * w / h)))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = (pic[y0:y0 + ch, x0:x0 + cw] * 255).astype(np.uint8)
    out = np.asarray(Image.fromarray(crop).resize((int(w), int(h)), Image.BILINEAR), dtype=np.float64) / 255.0
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return np.clip(out * rng.uniform(0.85, 1.1, size=3), 0, 1)


def _colour(rng, base, jitter):
    return np.clip(np.asarray(base) + rng.uniform(-jitter, jitter, size=3), 0, 1)


def background(rng, h, w):
    """A textured surface, float (h, w, 3) in [0, 1]."""
    kind = rng.choice(["wood", "wood", "tiles", "fabric", "plain", "plain", "plain", "stone", "dark", "texture",
                       "photo"])
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    if kind == "wood":
        angle = rng.uniform(0, np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        warp = _smooth_noise(rng, h, w, max(h, w) / 6) * rng.uniform(2, 6)
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (t * rng.uniform(8, 30) + warp))
        base = _colour(rng, rng.choice([[0.55, 0.38, 0.22], [0.75, 0.6, 0.5], [0.85, 0.72, 0.65], [0.4, 0.25, 0.15],
                                         [0.88, 0.78, 0.74]]), 0.08)
        img = base * (1 - rng.uniform(0.05, 0.25) * grain[..., None])
    elif kind == "tiles":
        period = rng.uniform(0.08, 0.3) * max(h, w)
        gap = rng.uniform(1, 4)
        lines = ((np.mod(np.mgrid[0:h, 0:w][0], period) < gap) | (np.mod(np.mgrid[0:h, 0:w][1], period) < gap))
        base = _colour(rng, rng.choice([[0.8, 0.8, 0.78], [0.5, 0.55, 0.6], [0.7, 0.5, 0.4], [0.3, 0.3, 0.35]]), 0.1)
        img = base * (0.9 + 0.15 * _smooth_noise(rng, h, w, 4)[..., None])
        img = np.where(lines[..., None], img * 0.6, img)
    elif kind == "fabric":
        f1, f2 = rng.uniform(0.3, 1.2, size=2)
        weave = 0.5 + 0.25 * (np.sin(np.mgrid[0:h, 0:w][0] * f1) + np.sin(np.mgrid[0:h, 0:w][1] * f2))
        base = _colour(rng, rng.uniform(0.1, 0.8, size=3), 0.05)
        img = base * (0.75 + 0.35 * weave[..., None]) * (0.9 + 0.2 * _smooth_noise(rng, h, w, 20)[..., None])
    elif kind == "plain":  # painted or laminated desks, often close to paper white
        base = _colour(rng, rng.choice([[0.85, 0.78, 0.78], [0.8, 0.8, 0.82], [0.9, 0.85, 0.75], [0.7, 0.7, 0.7],
                                        [0.93, 0.88, 0.9], [0.9, 0.9, 0.92]]), 0.06)
        img = base * (0.92 + 0.1 * _smooth_noise(rng, h, w, max(h, w) / 4)[..., None])
        img = img + rng.normal(0, 0.01, size=(h, w, 1))
    elif kind == "texture":  # brick, grass, gravel in grey, tinted
        tex = _picture(rng, h, w, "textures")
        if tex is None:
            return background(rng, h, w)
        base = _colour(rng, rng.uniform(0.3, 0.85, size=3), 0.05)
        img = base * (0.6 + 0.6 * tex.mean(-1, keepdims=True))
    elif kind == "photo":  # anything: a photo out of focus behind the document
        img = _picture(rng, h, w)
        if img is None:
            return background(rng, h, w)
        img = ndimage.gaussian_filter(img, (rng.uniform(0, 3), rng.uniform(0, 3), 0)) * rng.uniform(0.6, 1.0)
    elif kind == "stone":
        n = _smooth_noise(rng, h, w, rng.uniform(2, 10), octaves=4)
        base = _colour(rng, [0.6, 0.6, 0.6], 0.2)
        img = base * (0.6 + 0.6 * n[..., None])
    else:
        base = _colour(rng, [0.12, 0.12, 0.14], 0.08)
        img = base * (0.8 + 0.4 * _smooth_noise(rng, h, w, 30)[..., None])
    return np.clip(img, 0, 1)


def paper_texture(rng, receipt):
    """A flat sheet with text-like content, float (ph, pw, 3) in [0, 1]."""
    pw, ph = (180, 520) if receipt else (300, 424)
    paper = _colour(rng, rng.choice([[0.98, 0.98, 0.97], [0.98, 0.98, 0.97], [0.96, 0.94, 0.88], [0.95, 0.96, 0.98]]),
                    0.02)
    img = Image.new("RGB", (pw, ph), tuple(int(255 * c) for c in paper))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in np.full(3, rng.integers(10, 120)) + rng.integers(-10, 10, size=3))
    margin = int(pw * rng.uniform(0.06, 0.14))
    y = int(ph * rng.uniform(0.04, 0.1))
    if rng.uniform() < 0.7:  # heading or logo
        hw = int((pw - 2 * margin) * rng.uniform(0.3, 0.8))
        x0 = (pw - hw) // 2 if receipt else margin
        draw.rectangle([x0, y, x0 + hw, y + int(ph * 0.03)], fill=ink)
        if rng.uniform() < 0.4:
            col = tuple(int(v) for v in rng.integers(0, 255, size=3))
            draw.rectangle([pw - margin - 40, y, pw - margin, y + 30], fill=col)
        y += int(ph * 0.06)
    line_h = int(rng.integers(3, 7))
    density = rng.uniform(0.2, 1.0)  # share of lines that carry text
    while y < ph * 0.85:
        if rng.uniform() > density:
            y += 2 * line_h
            continue
        if not receipt and rng.uniform() < 0.04 and y < ph * 0.7:  # a picture (magazines, data sheets)
            pic_w = int((pw - 2 * margin) * rng.uniform(0.3, 1.0))
            pic_h = int(min(ph * 0.85 - y, ph * rng.uniform(0.1, 0.35)))
            pic = _picture(rng, pic_h, pic_w)
            if pic is not None:
                x0 = margin + int(rng.integers(0, pw - 2 * margin - pic_w + 1))
                img.paste(Image.fromarray((pic * 255).astype(np.uint8)), (x0, int(y)))
                y += pic_h + 2 * line_h
                continue
        if not receipt and rng.uniform() < 0.05:  # a table
            rows = int(rng.integers(3, 7))
            for r in range(rows + 1):
                draw.line([margin, y + r * 3 * line_h, pw - margin, y + r * 3 * line_h], fill=ink, width=1)
            y += rows * 3 * line_h + line_h
            continue
        x = margin
        while x < pw - margin:  # words
            word = int(rng.integers(6, 30))
            if x + word > pw - margin:
                break
            draw.rectangle([x, y, x + word, y + max(1, line_h - 3)], fill=ink)
            x += word + int(rng.integers(3, 8))
            if receipt and rng.uniform() < 0.15:
                x = pw - margin - int(rng.integers(20, 40))  # price column
        y += int(line_h * rng.uniform(1.6, 2.4))
    if receipt or rng.uniform() < 0.3:  # barcode
        bx, by = margin + int(rng.integers(0, 20)), int(ph * 0.88)
        x = bx
        while x < min(pw - margin, bx + 140):
            bw = int(rng.integers(1, 4))
            draw.rectangle([x, by, x + bw - 1, by + int(ph * 0.07)], fill=(0, 0, 0))
            x += bw + int(rng.integers(1, 4))
    tex = np.asarray(img, dtype=np.float64) / 255.0
    return ndimage.gaussian_filter(tex, (0.6, 0.6, 0))


def _homography(src, dst):
    """3x3 H with H @ [src, 1] ~ [dst, 1] for four point pairs."""
    a = []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(a, dtype=np.float64))
    return vt[-1].reshape(3, 3) / vt[-1, -1]


def random_quad(rng, h, w, aspect):
    """Corners (x, y) of a paper of ``aspect`` (height / width) covering 6-55% of the frame, in perspective."""
    area = np.exp(rng.uniform(np.log(0.05), np.log(0.5))) * h * w
    pw = np.sqrt(area / aspect)
    ph = pw * aspect
    angle = rng.normal(0, 0.35) + (np.pi / 2 if rng.uniform() < 0.15 else 0)
    corners = np.array([[-pw, -ph], [pw, -ph], [pw, ph], [-pw, ph]]) / 2
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = corners @ rot.T
    if rng.uniform() < 0.5:  # a wide camera frame resized to a square squashes everything horizontally
        corners[:, 0] *= rng.uniform(0.5, 0.9)
    # perspective: shrink the far edge, jitter every corner
    tilt = rng.uniform(0.0, 0.25)
    corners[:2, 0] *= 1 - tilt
    corners += rng.normal(0, 0.04 * np.sqrt(area), size=(4, 2))
    ext = corners.max(0) - corners.min(0)
    slack = np.maximum(np.array([w, h]) - ext, 0)
    centre = np.array([w, h]) / 2 + (rng.uniform(-0.5, 0.5, size=2) * slack) * rng.uniform(0.3, 1.0)
    # documents sometimes run off the frame a little
    return corners + centre + rng.normal(0, 0.02 * min(h, w), size=2)


def warp_paper(rng, tex, quad, h, w):
    """Map the texture onto ``quad`` with curl/crumple; returns (paper rgb, mask, shading)."""
    ph, pw = tex.shape[:2]
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    hinv = _homography(quad, src)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    pts = np.stack([xx, yy, np.ones_like(xx)], -1) @ hinv.T
    u, v = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    # curl along one axis and small crumples: displace the paper coordinates smoothly
    curl = rng.uniform(0, 0.03)
    phase = rng.uniform(0, 2 * np.pi)
    u = u + curl * np.sin(np.pi * v + phase)
    crumple = rng.uniform(0, 0.012)
    if crumple > 0.004:
        u = u + crumple * (_smooth_noise(rng, h, w, min(h, w) / 8) - 0.5)
        v = v + crumple * (_smooth_noise(rng, h, w, min(h, w) / 8) - 0.5)
    mask = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    ui = np.clip(u * (pw - 1), 0, pw - 1)
    vi = np.clip(v * (ph - 1), 0, ph - 1)
    rgb = np.stack([ndimage.map_coordinates(tex[..., c], [vi, ui], order=1) for c in range(3)], -1)
    shading = 1.0 - rng.uniform(0, 0.12) * (0.5 + 0.5 * np.sin(2 * np.pi * u * rng.uniform(0.5, 2) + phase))
    return rgb, mask, shading


def _printed(rng, canvas, x, y, s):
    """A magazine, book cover or photo print (a bundled picture, a white border sometimes) lying at ``(x, y)``."""
    ph, pw = int(s * rng.uniform(1.6, 3.0)), int(s * rng.uniform(1.2, 2.2))
    pic = _picture(rng, ph, pw)
    if pic is None:
        return False
    if rng.uniform() < 0.3:  # a photo print's white border
        b = max(1, int(min(ph, pw) * 0.06))
        pic[:b], pic[-b:], pic[:, :b], pic[:, -b:] = 0.95, 0.95, 0.95, 0.95
    item = Image.fromarray((pic * 255).astype(np.uint8))
    angle = rng.uniform(0, 360)
    item = item.rotate(angle, resample=Image.BILINEAR, expand=True)
    alpha = Image.new("L", (pw, ph), 255).rotate(angle, resample=Image.BILINEAR, expand=True)
    canvas.paste(item, (int(x - item.width / 2), int(y - item.height / 2)), alpha)
    return True


def _clutter(rng, canvas, h, w, n, near_edges=True):
    draw = ImageDraw.Draw(canvas)
    for _ in range(n):
        if near_edges:
            side = rng.integers(4)
            x = rng.uniform(0, 0.2) * w if side == 0 else (rng.uniform(0.8, 1) * w if side == 1 else rng.uniform(0, w))
            y = rng.uniform(0, 0.2) * h if side == 2 else (rng.uniform(0.8, 1) * h if side == 3 else rng.uniform(0, h))
        else:
            x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        col = tuple(int(c) for c in rng.integers(0, 255, size=3))
        kind = rng.integers(5)
        s = rng.uniform(0.05, 0.2) * min(h, w)
        if kind == 4 and _printed(rng, canvas, x, y, s):
            continue
        if kind in (0, 4):  # mug, fruit
            draw.ellipse([x - s, y - s * rng.uniform(0.6, 1), x + s, y + s], fill=col, outline=(40, 40, 40), width=2)
        elif kind == 1:  # book, phone, magazine
            pts = np.array([[-s, -1.4 * s], [s, -1.4 * s], [s, 1.4 * s], [-s, 1.4 * s]])
            a = rng.uniform(0, np.pi)
            pts = pts @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T + [x, y]
            draw.polygon([tuple(p) for p in pts], fill=col)
        elif kind == 2:  # cable
            pts = [(x, y)]
            for _ in range(6):
                x, y = x + rng.normal(0, s), y + rng.normal(0, s)
                pts.append((x, y))
            draw.line(pts, fill=tuple(int(c) for c in rng.integers(0, 60, size=3)), width=int(max(2, s / 10)),
                      joint="curve")
        else:  # pen
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * s * 1.2
            draw.line([tuple(np.array([x, y]) - d), tuple(np.array([x, y]) + d)], fill=col, width=int(max(3, s / 6)))


def _cables(rng, canvas, h, w, n):
    """``n`` long cables across the frame: smooth dark curves from one edge to another (over the paper too)."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(n):
        ends = []
        for side in rng.choice(4, size=2, replace=False):
            t = rng.uniform(0, 1)
            ends.append([(0, t * h), (w, t * h), (t * w, 0), (t * w, h)][side])
        ctrl = np.array([ends[0], *(rng.uniform(0.1, 0.9, size=(2, 2)) * [w, h]), ends[1]])
        t = np.linspace(0, 1, 64)[:, None]  # a cubic Bezier curve through the four points' hull
        pts = ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t ** 2 * ctrl[2]
               + t ** 3 * ctrl[3])
        grey = int(rng.integers(5, 70))
        draw.line([tuple(p) for p in pts], fill=(grey, grey, grey), width=int(max(2, rng.uniform(0.005, 0.014)
                                                                                      * min(h, w))),
                  joint="curve")


def render(rng, size=224, supersample=2, layers=None):
    """One synthetic photo: ``(image float (size, size, 3) in [0, 1], mask bool (size, size))``.

    Parameters
    ----------
    rng : numpy.random.Generator
    size : int
        Output side in pixels.
    supersample : int
        Rendering resolution factor (anti-aliasing); 1 renders at ``size`` directly.
    layers : dict, optional
        Filled with the intermediate layers at the rendering resolution (``background``, ``paper``,
        ``composite`` before lighting and camera effects, ``mask`` and ``quad``), for inspection and tests.
    """
    h = w = size * supersample
    bg = background(rng, h, w)
    # clutter and stray sheets on the surface
    canvas = Image.fromarray((bg * 255).astype(np.uint8))
    _clutter(rng, canvas, h, w, int(rng.integers(0, 9)))
    bg = np.asarray(canvas, dtype=np.float64) / 255.0
    receipt = rng.uniform() < 0.5
    tex = paper_texture(rng, receipt)
    quad = random_quad(rng, h, w, tex.shape[0] / tex.shape[1])
    if rng.uniform() < 0.3:  # sheets beneath the document: background, like SmartDoc's paper stacks
        for _ in range(int(rng.integers(1, 4))):
            under = quad + rng.normal(0, rng.choice([0.02, 0.08]) * size * supersample, size=(1, 2)) \
                + rng.normal(0, 0.01 * size * supersample, size=(4, 2))
            rgb_u, m_u, _ = warp_paper(rng, paper_texture(rng, rng.uniform() < 0.2), under, h, w)
            edge = ndimage.gaussian_filter(m_u.astype(np.float64), rng.uniform(0.5, 2) * supersample)
            bg = bg * (1 - rng.uniform(0.05, 0.3) * edge[..., None])  # its thin shadow
            bg = np.where(m_u[..., None], rgb_u * rng.uniform(0.9, 1.0), bg)
    rgb, mask, shading = warp_paper(rng, tex, quad, h, w)
    # drop shadow of the paper on the surface
    offset = rng.normal(0, 0.01 * h, size=2)
    shadow = ndimage.shift(mask.astype(np.float64), offset[::-1], order=0)
    shadow = ndimage.gaussian_filter(shadow, rng.uniform(1, 4) * supersample)
    bg = bg * (1 - rng.uniform(0.1, 0.4) * shadow[..., None])
    img = np.where(mask[..., None], rgb * shading[..., None], bg)
    if layers is not None:
        layers.update(background=bg, paper=rgb * shading[..., None], composite=img.copy(), mask=mask.copy(),
                      quad=quad)
    across, cables = rng.uniform() < 0.4, rng.uniform() < 0.4
    if across or cables:  # objects across the paper, cables across the frame (still paper, as in SmartDoc)
        canvas = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
        if across:
            _clutter(rng, canvas, h, w, int(rng.integers(1, 4)), near_edges=False)
        if cables:
            _cables(rng, canvas, h, w, int(rng.integers(1, 3)))
        img = np.asarray(canvas, dtype=np.float64) / 255.0
    # lighting: gradient, soft cast shadow, colour cast
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    gx, gy = rng.normal(0, 0.25, size=2)
    light = 1 + gx * (xx - 0.5) + gy * (yy - 0.5)
    if rng.uniform() < 0.4:
        blob = _smooth_noise(rng, h, w, max(h, w) / 3, octaves=1) > rng.uniform(0.5, 0.7)
        light = light * (1 - rng.uniform(0.1, 0.35) * ndimage.gaussian_filter(blob.astype(float), 6 * supersample))
    img = img * light[..., None] * rng.uniform(0.93, 1.05, size=3) * rng.uniform(0.8, 1.2)
    # camera: downsample (box filter), blur, noise, jpeg
    if supersample > 1:
        img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
        mask = mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3)) >= 0.5
    img = ndimage.gaussian_filter(img, (rng.uniform(0, 0.8), rng.uniform(0, 0.8), 0))
    img = img + rng.normal(0, rng.uniform(0.003, 0.03), size=img.shape)
    img = np.clip(img, 0, 1)
    if rng.uniform() < 0.5:
        buf = io.BytesIO()
        Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=int(rng.integers(50, 95)))
        img = np.asarray(Image.open(buf), dtype=np.float64) / 255.0
    return img.astype(np.float32), mask


def dataset_range(seed, start, stop, size=224, supersample=2, progress=None):
    """Samples ``start..stop-1`` of the stream of ``seed``: images float32 ``(n, size, size, 3)``, masks uint8.

    Sample ``i`` depends only on ``(seed, i)``, so any chunking of the stream gives the same samples.
    """
    n = stop - start
    images = np.empty((n, size, size, 3), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=np.uint8)
    it = range(n) if progress is None else progress(range(n))
    for k in it:
        images[k], m = render(np.random.default_rng([seed, start + k]), size, supersample)
        masks[k] = m
    return images, masks


def dataset(n, seed, size=224, supersample=2, progress=None):
    """The first ``n`` samples of the stream of ``seed`` (see :func:`dataset_range`)."""
    return dataset_range(seed, 0, n, size, supersample, progress)
