"""The showcase pipeline: train a U-Net, freeze it, add the CRF-RNN layer, retrain, evaluate, report.

The blog's five steps (train features, freeze them, plug in CRF-RNN, retrain, infer) as a Python API; the CLI
(``python -m unet``) is a thin layer over these functions.
"""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import crfcore
from crfcore.adapters.tf import CrfRnnLayer

from . import metrics
from .array_pipelines import without_autotune
from .augment import augment
from .model import build_unet

#: densecrf's default CRF in the pipeline's units (images in [0, 1], so theta_beta = 13 grey levels of 255): where
#: the CRF-RNN layer starts when it learns its widths (the default).
DENSECRF_DEFAULTS = dict(theta_alpha=80.0, theta_beta=13.0 / 255.0, theta_gamma=3.0, num_iterations=5,
                         normalization="symmetric", spatial_weight=3.0, bilateral_weight=10.0)
#: Hand-tuned widths for 224x224 images in [0, 1], the settings before the widths could be learned: densecrf's
#: theta_alpha = 80 px spans a third of a 224 image and lets the paper's white leak into white desks; 10 px and 40
#: grey levels keep the bilateral kernel local. Chosen with crfcore.meanfield on a synthetic dev set.
CRF_PARAMS = dict(theta_alpha=10.0, theta_beta=40.0 / 255.0, theta_gamma=3.0, num_iterations=5,
                  normalization="symmetric", spatial_weight=3.0, bilateral_weight=5.0)
CRF_STARTS = {"densecrf": DENSECRF_DEFAULTS, "tuned": CRF_PARAMS}
#: The widths the CRF stage learns by default: the bilateral kernel's. theta_gamma stays at densecrf's 3 px (as in
#: densecrf and Kraehenbuehl & Koltun, who found the smoothness kernel's width of little effect): learned with the
#: others it grew to 5-11 px on the synthetic photos, a plain blur that rounds the document's outline, while the
#: bilateral kernel shrank to 3 px, and the CRF lost Dice against the hand-tuned one.
LEARNED_WIDTHS = ("theta_alpha", "theta_beta")
METHODS = ("unet", "unet+meanfield-defaults", "unet+meanfield", "unet+crf-rnn-tuned", "unet+crf-rnn")
LABELS = {"unet": "U-Net alone",
          "unet+meanfield-defaults": "U-Net + crfcore.meanfield, densecrf's default parameters (not tuned)",
          "unet+meanfield": "U-Net + crfcore.meanfield, parameters from crfcore.fit on the dev split",
          "unet+crf-rnn-tuned": "U-Net + CRF-RNN, hand-tuned widths (fixed)",
          "unet+crf-rnn": "U-Net + trained CRF-RNN layer"}


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _dev_loss(model, dev, batch_size, boundary_weight=0.0, far=None, scores=False):
    """Mean cross-entropy of ``model``'s logits on ``dev`` plus the boundary term (counted where ``far``, see
    :func:`boundary_length`), None when ``dev`` is empty; with ``scores``, ``(loss, {"dice", "islands"})``: the
    masks' mean Dice and islands per image."""
    if not len(dev):
        return (None, None) if scores else None
    logits = model.predict(dev.images, batch_size=batch_size, verbose=0)
    loss = float(_loss()(dev.masks, logits))
    if boundary_weight:
        loss += boundary_weight * float(boundary_length(tf.constant(logits), far))
    if not scores:
        return loss
    summary = metrics.summarise(logits.argmax(-1).astype(np.uint8), dev.masks)
    return loss, {"dice": summary["dice"], "islands": summary["islands_per_image"]}


def set_deterministic(enabled=True, threads=None):
    """Make TensorFlow's ops deterministic (``tf.config.experimental.enable_op_determinism``), or allow the faster
    nondeterministic ones again.

    With it, and the seeds every training function sets (``keras.utils.set_random_seed``: Python, NumPy and
    TensorFlow), training on one machine gives the same weights run after run: the synthetic data, the
    augmentation and the batch order are seeded per sample and per epoch already, and crfcore's kernels reduce in
    a fixed order. The switch is global to the process; ``python -m unet`` turns it on unless
    ``--no-deterministic``.

    TensorFlow's inter-op thread pool runs independent ops in whichever order its threads free up, and with it two
    processes drifted apart after a few steps; on, this switch therefore runs ops one after another (each op still
    uses all cores: the intra-op pool), which gave bit-identical weights in two processes for about 10 % more time
    per U-Net step on 2 cores (measured with ``docs/scripts/determinism_cost.py``). The thread pools can only be set
    before TensorFlow runs its first op; later the switch leaves them as they are.

    Parameters
    ----------
    enabled : bool
        On (deterministic ops, inter-op pool of one thread) or off (TensorFlow's defaults for the ops).
    threads : int, optional
        TensorFlow's intra-op threads (default: all cores).
    """
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if enabled:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow has started: its pools are fixed for this process
            pass
    if enabled:
        tf.config.experimental.enable_op_determinism()
    else:  # no public name for the way back in TensorFlow 2.21
        from tensorflow.python.framework import config

        config.disable_op_determinism()


def is_deterministic():
    """Whether :func:`set_deterministic` is on."""
    from tensorflow.python.framework import config

    return bool(config.is_op_determinism_enabled())


def _average_weights(runs):
    """The element-wise mean of several ``model.get_weights()`` lists (integer counters keep the last value)."""
    out = []
    for ws in zip(*runs):
        if np.issubdtype(np.asarray(ws[-1]).dtype, np.floating):
            out.append(np.mean(np.stack(ws), axis=0).astype(np.asarray(ws[-1]).dtype))
        else:
            out.append(ws[-1])
    return out


#: Training images whose statistics the batch normalisation keeps at the end of :func:`train_unet`.
BATCHNORM_IMAGES = 64


def recompute_batchnorm(model, images):
    """Set every batch normalisation layer's moving statistics to the exact statistics of ``images``.

    During training the moving averages trail the weights, which move fast; at the end they can describe a network
    that no longer exists (a depthwise-separable U-Net trained for a few hundred steps predicted nothing at all in
    inference mode while its batch statistics segmented well), and averaged weights have no statistics of their
    own. One forward pass in training mode with the layers' momentum at 0 stores each layer's batch statistics,
    computed with the layers above normalised the same way, which is what inference then reproduces ("precise
    batch normalisation", Wu & Johnson 2021). ``images``: a few dozen training images, augmented as in training.
    """
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
              and layer.trainable]
    if not layers or not len(images):
        return model
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(images, training=True)
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m
    return model


def _batchnorm_of_training(model, train, seed, epoch, augmented):
    """:func:`recompute_batchnorm` on :data:`BATCHNORM_IMAGES` training images, ``augmented`` as in training."""
    pick = np.random.default_rng([seed, 1000 + epoch]).permutation(len(train))[:BATCHNORM_IMAGES]
    recompute_batchnorm(model, augmented(train.images[pick], train.masks[pick], [seed, 1000 + epoch])[0])


def train_unet(train, dev, *, epochs=8, batch_size=8, learning_rate=3e-3, seed=0, verbose=1, augmentation=True,
               init=None, keep_best=True, average_last=0, warmup=0, jit_compile="auto", freeze_batchnorm=False):
    """Step 1: train a U-Net on ``train`` (a :class:`unet.data.Dataset`), validate on ``dev``.

    Parameters
    ----------
    augmentation : bool or dict
        Flips, small rotations, scale and colour jitter, drawn afresh each epoch (:mod:`unet.augment`; a dict
        overrides :data:`unet.augment.DEFAULTS`' strengths); False keeps the images as they are.
    init : keras.Model, optional
        Fine-tune this model (a U-Net, or the U-Net inside a U-Net + CRF model) instead of starting from scratch,
        e.g. one trained on synthetic photos before a small real data set.
    keep_best : bool
        Return the weights of the epoch with the lowest dev loss (when ``dev`` is not empty and ``average_last`` is
        0). The dev loss is computed from the middle epoch on (``epochs // 2``, 0-based): with the cosine decay the
        first half did not hold the best epoch in any demo run (the last one did, 4 of 4), and each check costs a
        batch-statistics pass and a dev pass (~6 s at 224 px).
    average_last : int
        Return the mean of the weights at the end of the last ``average_last`` epochs (0: off), the way stochastic
        weight averaging does: no dev set is needed to choose an epoch, and on a few dozen photos the average
        varies less from seed to seed than any one epoch. Overrides ``keep_best``.
    warmup : int
        Epochs of linear learning-rate warm-up before the cosine decay (0: none); fine-tuning from ``init`` starts
        gently, so that the first large steps on a few photos do not undo what the synthetic photos taught.
    freeze_batchnorm : bool
        With ``init``: hold the batch normalisation layers as ``init`` left them (their statistics and scales, run
        in inference mode), the usual way to fine-tune on a few photos, whose batches of 8 give noisy statistics
        of one or two backgrounds.
    jit_compile : bool or "auto"
        Keras's: XLA compiles the training step (on 2 cores ~15-40 s before the first step; worth it for the
        demo's hundreds of steps, not for a fine-tuning of a few dozen).

    Unless ``freeze_batchnorm``, after every epoch with a dev loss (before it), after the last one and after
    averaging, the batch normalisation's statistics are recomputed on :data:`BATCHNORM_IMAGES` augmented
    training images (:func:`recompute_batchnorm`): the dev loss judges the model as it will predict.

    Returns
    -------
    model : keras.Model
        Image in [0, 1] -> logits.
    history : dict
        Per-epoch ``loss``; ``val_loss`` of the epochs ``val_epochs`` (1-based); ``best_epoch`` (1-based) whose
        weights were kept; ``seconds`` spent on augmentation, ``fit``, batch statistics and the dev set.
    """
    keras.utils.set_random_seed(seed)
    size = train.images.shape[1]
    if init is not None:
        base = unet_of(init) if "crfrnn" in [layer.name for layer in init.layers] else init
        if tuple(base.inputs[0].shape[1:3]) != (size, size):
            raise ValueError(f"the --init model takes {tuple(base.inputs[0].shape[1:3])} images but the data is "
                             f"{size}x{size}; pass --size {base.inputs[0].shape[1]}")
        model = keras.models.clone_model(base)
        model.set_weights(base.get_weights())
        for layer in [model, *model.layers]:  # a U-Net + CRF model's U-Net is frozen, and its clone's layers too
            layer.trainable = True
        if freeze_batchnorm:
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False  # Keras 3: a frozen BatchNormalization runs in inference mode
    else:
        model = build_unet(size=size)
    per_epoch = -(-len(train) // batch_size)
    steps = max(1, epochs * per_epoch)
    if warmup:
        warm = min(steps - 1, warmup * per_epoch)
        schedule = keras.optimizers.schedules.CosineDecay(0.0, steps - warm, alpha=0.05, warmup_target=learning_rate,
                                                          warmup_steps=warm)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=_loss(), jit_compile=jit_compile)
    # the optimizer's slots made now, not inside the first step: a tf.function that creates variables is traced
    # twice (measured: the first step of a 64 px U-Net took 13 s, 5.7 s with the slots built before)
    model.optimizer.build(model.trainable_variables)
    history = {"loss": [], "val_loss": [], "val_epochs": [], "best_epoch": None}
    best = (np.inf, None)
    averaged = []
    strength = augmentation if isinstance(augmentation, dict) else None

    def augmented(images, masks, draw):
        return augment(images, masks, seed=draw, strength=strength) if augmentation else (images, masks)

    seconds = {"augment": 0.0, "fit": 0.0, "batchnorm": 0.0, "dev": 0.0}
    clock = time.perf_counter()

    def lap(part):
        nonlocal clock
        now = time.perf_counter()
        seconds[part] += now - clock
        clock = now

    with without_autotune():  # one fit per epoch: an autotuned pipeline stalled up to 17 s at each fit's end
        for epoch in range(epochs):
            if verbose:
                print(f"U-Net epoch {epoch + 1}/{epochs}")
            x, y = augmented(train.images, train.masks, [seed, epoch])
            lap("augment")
            h = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=verbose)
            lap("fit")
            history["loss"] += h.history["loss"]
            validate = len(dev) and epoch >= epochs // 2
            # the statistics of these weights: for the dev loss, and for the last epoch's model when it is returned
            if not freeze_batchnorm and (validate or (epoch == epochs - 1 and not average_last)):
                _batchnorm_of_training(model, train, seed, epoch, augmented)
                lap("batchnorm")
            val = model.evaluate(dev.images, dev.masks, batch_size=batch_size, verbose=0) if validate else None
            if val is not None:
                history["val_loss"].append(val)
                history["val_epochs"].append(epoch + 1)
                if keep_best and not average_last and val < best[0]:
                    best = (val, model.get_weights())
                    history["best_epoch"] = epoch + 1
            if average_last and epoch >= epochs - average_last:
                averaged.append(model.get_weights())
            lap("dev")
            if verbose:
                parts = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
                print(f"  {sum(seconds.values()):.0f} s so far: {parts}")
    if averaged:
        model.set_weights(_average_weights(averaged))
        history["best_epoch"] = None
        history["averaged_epochs"] = list(range(epochs - len(averaged) + 1, epochs + 1))
    elif keep_best and best[1] is not None:
        model.set_weights(best[1])
    else:
        history["best_epoch"] = epochs
    if averaged and not freeze_batchnorm:  # averaged weights have no statistics of their own: the last epoch's images
        _batchnorm_of_training(model, train, seed, epochs - 1, augmented)
        lap("batchnorm")
    history["seconds"] = seconds
    return model, history


def attach_crf(unet, crf_params=None, *, learn_widths=LEARNED_WIDTHS, start="densecrf", guide=False):
    """Steps 2-3: freeze ``unet`` and plug ``CrfRnnLayer`` on its logits and input image.

    ``start`` picks the initial CRF: ``"densecrf"`` (densecrf's default kernels, :data:`DENSECRF_DEFAULTS`) or
    ``"tuned"`` (the hand-tuned widths, :data:`CRF_PARAMS`); ``crf_params`` overrides any of the layer's
    arguments. ``learn_widths`` (``CrfRnnLayer``'s ``trainable_widths``: True, False or the names of those to learn)
    makes widths trainable; by default :data:`LEARNED_WIDTHS`. ``guide`` puts a trainable
    1x1 convolution (initially the identity) between the image and the CRF's bilateral kernel, so that training can
    learn which colour differences the kernel should respect (the CRF's gradient reaches its image input).
    """
    if start not in CRF_STARTS:
        raise ValueError(f"`start` must be one of {sorted(CRF_STARTS)}, got {start!r}")
    unet.trainable = False
    size = unet.inputs[0].shape[1:3]
    params = dict(CRF_STARTS[start], **(crf_params or {}))
    layer = CrfRnnLayer(image_dims=tuple(size), num_classes=unet.outputs[0].shape[-1], name="crfrnn",
                        trainable_widths=learn_widths, **params)
    image = unet.inputs[0]
    if guide:
        channels = image.shape[-1]
        image = keras.layers.Conv2D(channels, 1, name="crf_guide", kernel_initializer=keras.initializers.Constant(
            np.eye(channels).reshape(1, 1, channels, channels)), bias_initializer="zeros")(image)
    out = layer([unet.outputs[0], image])
    return keras.Model(unet.inputs, out, name="unet_crf")


def boundary_length(logits, far=None):
    """Mean total variation of the softmax probabilities, ``sum_c |grad Q_c| / 2`` per pixel: a differentiable
    count of label boundaries, which every spurious island or hole adds to.

    ``far`` (``(n, H, W)`` of 0/1, optional) counts only the differences between two pixels that are both
    marked: with :func:`far_from_boundary`, the boundaries away from the true one.
    """
    q = tf.nn.softmax(logits, axis=-1)
    dy = tf.reduce_sum(tf.abs(q[:, 1:] - q[:, :-1]), axis=-1)
    dx = tf.reduce_sum(tf.abs(q[:, :, 1:] - q[:, :, :-1]), axis=-1)
    if far is not None:
        far = tf.cast(far, q.dtype)
        dy *= far[:, 1:] * far[:, :-1]
        dx *= far[:, :, 1:] * far[:, :, :-1]
    total = (tf.reduce_sum(dx) + tf.reduce_sum(dy)) / 2
    return total / tf.cast(tf.reduce_prod(tf.shape(q)[:3]), q.dtype)


def far_from_boundary(masks, margin):
    """``(n, H, W)`` uint8: 1 where a pixel is more than ``margin`` pixels from every boundary of its true mask."""
    from scipy import ndimage

    out = np.ones(np.shape(masks), dtype=np.uint8)
    if margin <= 0:
        return out
    for i, m in enumerate(np.asarray(masks)):
        edge = np.zeros(m.shape, dtype=bool)
        dy, dx = m[1:] != m[:-1], m[:, 1:] != m[:, :-1]  # both pixels of each differing pair are on the edge
        edge[1:] |= dy
        edge[:-1] |= dy
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        if edge.any():
            out[i] = ndimage.distance_transform_edt(~edge) > margin
    return out


#: What an island per image costs against the Dice when the CRF stage picks its epoch on the dev split: the
#: hand-tuned widths' 0.3 fewer islands per image than the learned ones came with ~0.003 less Dice.
ISLAND_COST = 0.01


def train_crf(crf_model, train, dev, *, epochs=2, batch_size=4, learning_rate=0.003, widths_learning_rate=0.05,
              boundary_weight=150.0, boundary_margin=3.0, seed=0, verbose=1, keep_best=True, augmentation=None,
              island_cost=ISLAND_COST):
    """Step 4: retrain the model from :func:`attach_crf`; only the CRF layer learns.

    The three matrices and the widths get Adam optimisers of their own: widths are logs and must travel far
    (densecrf's theta_alpha = 80 px to ~10 px is a factor of 8) in the few hundred steps this stage takes, which
    the matrices' learning rate would not allow. The loss is the cross-entropy plus ``boundary_weight`` times
    :func:`boundary_length`: cross-entropy alone prefers kernels that sharpen the U-Net's confident output and
    keep its specks (measured on the synthetic dev set: it fell from the start to narrow colour kernels that left
    2-3x more islands than the U-Net), while every spurious island or hole adds boundary. ``boundary_margin``
    (pixels) counts that boundary only away from the true mask's edge (:func:`far_from_boundary`), so the term
    does not pull on the document's own outline.

    ``augmentation`` (a dict of :data:`unet.augment.DEFAULTS`' strengths, True for those defaults, None or False
    for none) draws fresh augmented copies of ``train`` each epoch; the frozen U-Net sees them too.

    With ``keep_best``, the epoch kept is the one whose masks score best on ``dev``: the highest mean Dice minus
    ``island_cost`` per island per image (0: the Dice alone). Not the dev loss: islands are a few pixels each, so a
    pixel loss hardly sees them, and along the epochs the loss stays flat while the islands fall (measured: the
    lowest dev loss kept an epoch with 2-4x the islands of a later one, at the same Dice).

    Returns
    -------
    crf_model : keras.Model
        With the weights of the best dev epoch when ``keep_best`` (and ``dev`` is not empty).
    history : dict
        Per-epoch ``loss``, ``val_loss``, ``val_dice``, ``val_islands`` and ``widths``, and ``best_epoch`` (0: the
        untrained start was best).
    """
    keras.utils.set_random_seed(seed)
    layer = crf_model.get_layer("crfrnn")
    widths = [v for v in layer.trainable_weights if v.name.startswith("log_theta")]
    matrices = [v for v in crf_model.trainable_weights if all(v is not w for w in widths)]
    opt = keras.optimizers.Adam(learning_rate)
    opt_widths = keras.optimizers.Adam(widths_learning_rate)
    opt.build(matrices)  # before the step's tf.function, which would otherwise be traced twice (as in train_unet)
    if widths:
        opt_widths.build(widths)
    loss_fn = _loss()

    margin = boundary_margin if boundary_weight else 0  # no boundary term: no distance transforms
    far = None if augmentation else far_from_boundary(train.masks, margin)  # augmented: per epoch
    dev_far = far_from_boundary(dev.masks, margin) if len(dev) else None

    @tf.function
    def step(x, y, f):
        with tf.GradientTape() as tape:
            z = crf_model(x, training=True)
            loss = loss_fn(y, z)
            if boundary_weight:
                loss += boundary_weight * boundary_length(z, f)
        grads = tape.gradient(loss, matrices + widths)
        opt.apply_gradients(zip(grads[:len(matrices)], matrices))
        if widths:
            opt_widths.apply_gradients(zip(grads[len(matrices):], widths))
        return loss

    rng = np.random.default_rng(seed)
    n = len(train)
    history = {"loss": [], "val_loss": [], "val_dice": [], "val_islands": [], "widths": [], "best_epoch": 0}

    def score(s):
        return s["dice"] - island_cost * s["islands"]

    start = _dev_loss(crf_model, dev, batch_size, boundary_weight, dev_far, scores=True)[1] if keep_best else None
    best = (-np.inf if start is None else score(start), layer.get_weights())
    for epoch in range(epochs):
        images, masks = train.images, train.masks
        if augmentation:
            images, masks = augment(images, masks, seed=[seed, 1, epoch],
                                    strength=augmentation if isinstance(augmentation, dict) else None)
            far = far_from_boundary(masks, margin)
        order = rng.permutation(n)
        bar = keras.utils.Progbar(-(-n // batch_size), verbose=verbose, stateful_metrics=["loss"])
        losses = []
        if verbose:
            print(f"CRF-RNN epoch {epoch + 1}/{epochs}")
        for k, b0 in enumerate(range(0, n, batch_size)):
            idx = np.sort(order[b0:b0 + batch_size])
            losses.append(float(step(tf.constant(images[idx]), tf.constant(masks[idx]),
                                     tf.constant(far[idx]))))
            bar.update(k + 1, values=[("loss", np.mean(losses))])
        history["loss"].append(float(np.mean(losses)))
        history["widths"].append(layer.current_widths())
        val, scores = _dev_loss(crf_model, dev, batch_size, boundary_weight, dev_far, scores=True)
        if val is not None:
            history["val_loss"].append(val)
            history["val_dice"].append(scores["dice"])
            history["val_islands"].append(scores["islands"])
            if verbose:
                print(f"  dev loss {val:.4f}, Dice {scores['dice']:.4f}, islands {scores['islands']:.2f}, widths " +
                      ", ".join(f"{k} {v:.4g}" for k, v in layer.current_widths().items()))
            if keep_best and score(scores) > best[0]:
                best = (score(scores), layer.get_weights())
                history["best_epoch"] = epoch + 1
    if keep_best and len(dev):
        layer.set_weights(best[1])
    else:
        history["best_epoch"] = epochs
    return crf_model, history


def unet_of(crf_model):
    """The U-Net inside a model built by :func:`attach_crf` (the CRF layer's logits input)."""
    layer = crf_model.get_layer("crfrnn")
    return keras.Model(crf_model.inputs, layer.input[0], name="unet")


def crf_weights(crf_model):
    """The CRF layer's matrices and its widths (as widths, not logs), JSON-ready."""
    layer = crf_model.get_layer("crfrnn")
    out = {w.name: np.asarray(w.numpy()).tolist() for w in layer.weights if not w.name.startswith("log_theta")}
    out.update(layer.current_widths())
    return out


#: Dev images :func:`fit_postprocessing` fits on: each costs ~6 s of crfcore.fit at 224 px on 2 cores.
FIT_IMAGES = 8


def fit_postprocessing(unet, dev, *, max_images=FIT_IMAGES, max_iter=30, batch_size=8, progress=False):
    """``crfcore.fit`` on (up to ``max_images`` of) the dev split: the meanfield parameters a user would tune for
    post-processing this U-Net, for images in 0-255 as :func:`predict` gives them."""
    n = min(len(dev), max_images)
    logits = unet.predict(dev.images[:n], batch_size=batch_size, verbose=0)
    images = (dev.images[:n] * 255).round().astype(np.uint8)
    return crfcore.fit(list(logits), list(images), list(dev.masks[:n].astype(np.int64)), max_iter=max_iter,
                       progress=progress)


def predict(unet, crf_model, data, *, batch_size=8, progress=None, meanfield_params=None):
    """Masks and seconds per image of each method on ``data``.

    ``crf_model`` is a model from :func:`attach_crf` (method ``"unet+crf-rnn"``), a dict ``{method: model}`` of
    several, or None.

    Returns
    -------
    dict
        method -> ``(masks (n, H, W) uint8, seconds_per_image)`` for ``"unet"``, ``"unet+meanfield-defaults"``
        (crfcore's default parameters on the 0-255 image), ``"unet+meanfield"`` (``meanfield_params``, from
        :func:`fit_postprocessing`, when given) and each CRF-RNN model.
    """
    n = len(data)
    unet.predict(data.images[:1], verbose=0)  # build and warm up outside the timings
    t0 = time.perf_counter()
    logits = unet.predict(data.images, batch_size=batch_size, verbose=0)
    t_unet = (time.perf_counter() - t0) / n
    out = {"unet": (logits.argmax(-1).astype(np.uint8), t_unet)}
    for _ in range(2):  # JIT warm-up; on a cold cache the first is NumPy's (crfcore.warmup): time the kernels
        crfcore.meanfield(logits[:1], (data.images[:1] * 255).round().astype(np.uint8))
        crfcore.warmup.wait()
    rows = {"unet+meanfield-defaults": {}}
    if meanfield_params is not None:
        rows["unet+meanfield"] = meanfield_params
    for method, params in rows.items():
        post = np.empty((n,) + logits.shape[1:3], dtype=np.uint8)
        t0 = time.perf_counter()
        items = range(n) if progress is None else progress(range(n), desc=f"{method} post-processing")
        for i in items:
            q = crfcore.meanfield(logits[i], (data.images[i] * 255).round().astype(np.uint8), **params)
            post[i] = q.argmax(-1)
        out[method] = (post, t_unet + (time.perf_counter() - t0) / n)
    models = crf_model if isinstance(crf_model, dict) else ({} if crf_model is None else {"unet+crf-rnn": crf_model})
    for method, model in models.items():
        model.predict(data.images[:1], verbose=0)
        t0 = time.perf_counter()
        z = model.predict(data.images, batch_size=batch_size, verbose=0)
        out[method] = (z.argmax(-1).astype(np.uint8), (time.perf_counter() - t0) / n)
    return out


def evaluate(unet, crf_model, data, *, batch_size=8, progress=None, meanfield_params=None):
    """Metrics of each method on ``data``: ``(results, predictions)``.

    ``results[method]`` holds mean ``dice``, ``iou``, ``pixel_accuracy``, ``islands_per_image`` and
    ``ms_per_image``; ``predictions`` is the output of :func:`predict`.
    """
    preds = predict(unet, crf_model, data, batch_size=batch_size, progress=progress,
                    meanfield_params=meanfield_params)
    results = {}
    for method, (masks, seconds) in preds.items():
        results[method] = dict(metrics.summarise(masks, data.masks), ms_per_image=1000.0 * seconds,
                               n_images=len(data))
    return results, preds


def save_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    return path
