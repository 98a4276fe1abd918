"""A trainable CRF-RNN layer's first steps from densecrf's round default widths and from a start just off them.

The permutohedral lattice is piecewise smooth in the widths; round widths on the integer pixel grid put points on
simplex boundaries (ties), where the analytic gradient is that of one of the adjoining pieces. This script trains
``CrfRnnLayer`` (widths and matrices, Adam as in ``unet.pipeline.train_crf``) on SmartDoc photos with U-Net-like
noisy logits, from densecrf's defaults and from the same widths moved by ~0.5 %, and writes the loss and width
trajectories as JSON.

Usage: ``python docs/scripts/width_starts.py [DATA] [OUT.json]`` (DATA defaults to ../shared/data/smartdoc18).
"""

import json
import os
import sys
import time

import numpy as np
import scipy.ndimage as ndi


def noisy_logits(masks, rng, noise=2.5, blur=3.0, margin=1.2):
    """Logits a mediocre segmenter might give: the truth at +-margin plus blurred noise (specks, ragged edges)."""
    z = np.stack([ndi.gaussian_filter(rng.normal(size=m.shape), blur) for m in masks])
    z *= noise / z.std()
    fg = (2.0 * masks - 1.0) * margin + z
    return np.stack([-fg / 2, fg / 2], -1).astype(np.float32)


def main(data=None, out=None, steps=40, seed=0):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    from crfcore.adapters.tf import CrfRnnLayer
    from unet.data import load_folder

    data = data or os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "smartdoc18")
    ds = load_folder(data, size=224)
    rng = np.random.default_rng(seed)
    images, masks = ds.images.astype(np.float32), ds.masks.astype(np.float32)
    logits = noisy_logits(masks, rng)
    train, test = slice(0, 12), slice(12, None)
    # densecrf's defaults, and the same widths scaled by a few factors within 1 %: the spread among the nearby starts
    # is what the round start's result should be compared with
    defaults = np.array([80.0, 13.0, 3.0])
    starts = {f"x{f:g}": tuple(defaults * f) for f in (1.0, 1.0046, 0.9953, 1.0091, 0.9907)}
    results = {"steps": steps, "data": os.path.basename(os.path.normpath(data)), "runs": {}}
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for label, (ta, tb, tg) in starts.items():
        keras.utils.set_random_seed(seed)
        layer = CrfRnnLayer(image_dims=(224, 224), num_classes=2, theta_alpha=ta, theta_beta=tb / 255.0,
                            theta_gamma=tg, num_iterations=5, normalization="symmetric", spatial_weight=3.0,
                            bilateral_weight=10.0, trainable_widths=True)
        layer([logits[:1], images[:1]])
        widths = [v for v in layer.trainable_weights if v.name.startswith("log_theta")]
        matrices = [v for v in layer.trainable_weights if all(v is not w for w in widths)]
        opt, opt_w = keras.optimizers.Adam(0.003), keras.optimizers.Adam(0.05)
        run = {"train_loss": [], "test_loss": [], "widths": [], "grad_widths": []}
        order = np.random.default_rng(seed)
        t0 = time.perf_counter()
        for step in range(steps + 1):
            run["test_loss"].append(float(loss_fn(masks[test], layer([logits[test], images[test]]))))
            run["widths"].append(list(layer.current_widths().values()))
            if step == steps:
                break
            idx = order.choice(12, 4, replace=False)
            with tf.GradientTape() as tape:
                loss = loss_fn(masks[train][idx], layer([logits[train][idx], images[train][idx]]))
            grads = tape.gradient(loss, matrices + widths)
            opt.apply_gradients(zip(grads[:len(matrices)], matrices))
            opt_w.apply_gradients(zip(grads[len(matrices):], widths))
            run["train_loss"].append(float(loss))
            run["grad_widths"].append([float(g) for g in grads[len(matrices):]])
        run["seconds"] = time.perf_counter() - t0
        results["runs"][label] = run
        print(f"start {label} {np.round(run['widths'][0], 3).tolist()}: test loss {run['test_loss'][0]:.4f} -> "
              f"{run['test_loss'][-1]:.4f}, widths "
              f"{np.round(run['widths'][0], 4).tolist()} -> {np.round(run['widths'][-1], 4).tolist()}, "
              f"|d/dlog theta| first step {np.abs(run['grad_widths'][0]).round(4).tolist()}", flush=True)
    unary = float(loss_fn(masks[test], logits[test]))
    results["unary_test_loss"] = unary
    print(f"unary test loss {unary:.4f}")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(*sys.argv[1:3])
