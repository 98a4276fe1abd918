"""The showcase pipeline: train a U-Net, freeze it, add the CRF-RNN layer, retrain, evaluate, report.

The blog's five steps (train features, freeze them, plug in CRF-RNN, retrain, infer) as a Python API; the CLI
(``python -m unet``) is a thin layer over these functions.
"""

import json
import os
import time

import keras
import numpy as np

import crfcore
from adapters.tf import CrfRnnLayer

from . import metrics
from .model import build_unet

#: The CRF-RNN layer's settings for 224x224 images in [0, 1]. Kernel widths are not trained, so they are chosen
#: here: densecrf's default theta_alpha = 80 px spans a third of a 224 image and lets the paper's white leak into
#: white desks (and dark text into dark surfaces); 10 px and 40 grey levels of 255 keep the bilateral kernel local.
#: Chosen on a synthetic dev set with crfcore.meanfield before any training (the README gives the figures).
CRF_PARAMS = dict(theta_alpha=10.0, theta_beta=40.0 / 255.0, theta_gamma=3.0, num_iterations=5,
                  normalization="symmetric", spatial_weight=3.0, bilateral_weight=5.0)
METHODS = ("unet", "unet+meanfield", "unet+crf-rnn")
LABELS = {"unet": "U-Net alone", "unet+meanfield": "U-Net + crfcore.meanfield (defaults)",
          "unet+crf-rnn": "U-Net + trained CRF-RNN layer"}


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _flip_augment(images, masks, rng):
    """Random horizontal and vertical flips (a fresh draw each epoch)."""
    images, masks = images.copy(), masks.copy()
    h = rng.uniform(size=len(images)) < 0.5
    v = rng.uniform(size=len(images)) < 0.5
    images[h], masks[h] = images[h][:, :, ::-1], masks[h][:, :, ::-1]
    images[v], masks[v] = images[v][:, ::-1], masks[v][:, ::-1]
    return images, masks


def train_unet(train, dev, *, epochs=8, batch_size=8, learning_rate=3e-3, seed=0, verbose=1):
    """Step 1: train a U-Net from scratch on ``train`` (a :class:`unet.data.Dataset`), validate on ``dev``.

    Returns
    -------
    model : keras.Model
        Image in [0, 1] -> logits.
    history : dict
        Per-epoch ``loss`` and ``val_loss``.
    """
    keras.utils.set_random_seed(seed)
    size = train.images.shape[1]
    model = build_unet(size=size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, epochs * -(-len(train) // batch_size)),
                                                      alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=_loss())
    rng = np.random.default_rng(seed)
    history = {"loss": [], "val_loss": []}
    for epoch in range(epochs):
        if verbose:
            print(f"U-Net epoch {epoch + 1}/{epochs}")
        x, y = _flip_augment(train.images, train.masks, rng)
        h = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=verbose,
                      validation_data=(dev.images, dev.masks) if len(dev) else None)
        history["loss"] += h.history["loss"]
        history["val_loss"] += h.history.get("val_loss", [])
    return model, history


def attach_crf(unet, crf_params=None):
    """Steps 2-3: freeze ``unet`` and plug ``CrfRnnLayer`` on its logits and input image."""
    unet.trainable = False
    size = unet.inputs[0].shape[1:3]
    params = dict(CRF_PARAMS, **(crf_params or {}))
    layer = CrfRnnLayer(image_dims=tuple(size), num_classes=unet.outputs[0].shape[-1], name="crfrnn", **params)
    out = layer([unet.outputs[0], unet.inputs[0]])
    return keras.Model(unet.inputs, out, name="unet_crf")


def train_crf(crf_model, train, dev, *, epochs=2, batch_size=4, learning_rate=0.003, seed=0, verbose=1):
    """Step 4: retrain the model from :func:`attach_crf`; only the CRF's three matrices learn."""
    keras.utils.set_random_seed(seed)
    crf_model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=_loss())
    h = crf_model.fit(train.images, train.masks, batch_size=batch_size, epochs=epochs, verbose=verbose,
                      validation_data=(dev.images, dev.masks) if len(dev) else None, shuffle=True)
    return crf_model, {k: [float(v) for v in vs] for k, vs in h.history.items()}


def unet_of(crf_model):
    """The U-Net inside a model built by :func:`attach_crf` (the CRF layer's logits input)."""
    layer = crf_model.get_layer("crfrnn")
    return keras.Model(crf_model.inputs, layer.input[0], name="unet")


def crf_weights(crf_model):
    layer = crf_model.get_layer("crfrnn")
    return {w.name: np.asarray(w.numpy()).tolist() for w in layer.trainable_weights}


def predict(unet, crf_model, data, *, batch_size=8, progress=None):
    """Masks and seconds per image of each method on ``data``.

    Returns
    -------
    dict
        method -> ``(masks (n, H, W) uint8, seconds_per_image)`` for ``"unet"``, ``"unet+meanfield"`` (crfcore's
        default parameters on the 0-255 image) and, when ``crf_model`` is given, ``"unet+crf-rnn"``.
    """
    n = len(data)
    unet.predict(data.images[:1], verbose=0)  # build and warm up outside the timings
    t0 = time.perf_counter()
    logits = unet.predict(data.images, batch_size=batch_size, verbose=0)
    t_unet = (time.perf_counter() - t0) / n
    out = {"unet": (logits.argmax(-1).astype(np.uint8), t_unet)}
    crfcore.meanfield(logits[:1], (data.images[:1] * 255).round().astype(np.uint8))  # JIT warm-up
    post = np.empty((n,) + logits.shape[1:3], dtype=np.uint8)
    t0 = time.perf_counter()
    items = range(n) if progress is None else progress(range(n), desc="meanfield post-processing")
    for i in items:
        q = crfcore.meanfield(logits[i], (data.images[i] * 255).round().astype(np.uint8))
        post[i] = q.argmax(-1)
    out["unet+meanfield"] = (post, t_unet + (time.perf_counter() - t0) / n)
    if crf_model is not None:
        crf_model.predict(data.images[:1], verbose=0)
        t0 = time.perf_counter()
        z = crf_model.predict(data.images, batch_size=batch_size, verbose=0)
        out["unet+crf-rnn"] = (z.argmax(-1).astype(np.uint8), (time.perf_counter() - t0) / n)
    return out


def evaluate(unet, crf_model, data, *, batch_size=8, progress=None):
    """Metrics of each method on ``data``: ``(results, predictions)``.

    ``results[method]`` holds mean ``dice``, ``iou``, ``pixel_accuracy``, ``islands_per_image`` and
    ``ms_per_image``; ``predictions`` is the output of :func:`predict`.
    """
    preds = predict(unet, crf_model, data, batch_size=batch_size, progress=progress)
    results = {}
    for method, (masks, seconds) in preds.items():
        results[method] = dict(metrics.summarise(masks, data.masks), ms_per_image=1000.0 * seconds,
                               n_images=len(data))
    return results, preds


def save_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
