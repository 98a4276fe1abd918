"""The framework adapters' overhead: forward + backward of a batch of 4 through Keras, PyTorch and JAX against the bare
core's ``meanfield_fwd`` + ``meanfield_bwd`` on the same input (median ms, same process). Frameworks that are not
installed are skipped."""

import numpy as np

import crfcore

from .inputs import case

BATCH = 4
WIDTHS = dict(theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0)


def _inputs(size, n_lab):
    cases = [case(size, n_lab, photo_name=name, seed=i) for i, name in
             enumerate(["astronaut", "coffee", "chelsea", "rocket"][:BATCH])]
    return np.stack([c[1] for c in cases]), np.stack([c[0] for c in cases]).astype(np.float32)


def _core(logits, images, n_iter):
    g = np.ones_like(logits)

    def run():
        _, res = crfcore.meanfield_fwd(logits, images, n_iter=n_iter, output="logits", normalization="after",
                                       **WIDTHS)
        crfcore.meanfield_bwd(res, g, features=False)

    return run


def _keras(logits, images, n_iter):
    import tensorflow as tf

    from adapters.tf import CrfRnnLayer

    layer = CrfRnnLayer(num_iterations=n_iter, **WIDTHS)
    x, img = tf.constant(logits), tf.constant(images)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer([x, img]))
        return tape.gradient(y, [x] + layer.trainable_weights)

    def run():
        [t.numpy() for t in step()]

    return run


def _torch(logits, images, n_iter):
    import torch

    from adapters.torch import crf_refine

    x = torch.tensor(np.moveaxis(logits, -1, 1).copy(), requires_grad=True)
    img = torch.tensor(np.moveaxis(images, -1, 1).copy())

    def run():
        x.grad = None
        crf_refine(x, img, n_iter=n_iter, normalization="after", **WIDTHS).sum().backward()

    return run


def _jax(logits, images, n_iter):
    import jax
    import jax.numpy as jnp

    from adapters.jax import crf_refine

    grad = jax.jit(jax.grad(lambda x: jnp.sum(crf_refine(x, images, n_iter=n_iter, normalization="after",
                                                         **WIDTHS))))

    def run():
        jax.block_until_ready(grad(logits))

    return run


FRAMEWORKS = {"keras": _keras, "torch": _torch, "jax": _jax}


def run(configs=((224, 2, 5, 9), (512, 21, 10, 3)), progress=print):
    """Median ms of each (``configs``: size, labels, iterations, repeats), the peers timed in turn."""
    from .cli import timed_interleaved

    rows = []
    for size, n_lab, n_iter, repeats in configs:
        logits, images = _inputs(size, n_lab)
        progress(f"  adapters {size}x{size} L={n_lab} {n_iter} it, batch {BATCH}...")
        row = {"size": size, "labels": n_lab, "iterations": n_iter, "batch": BATCH}
        names, fns = ["core"], [_core(logits, images, n_iter)]
        for name, make in FRAMEWORKS.items():
            try:
                fns.append(make(logits, images, n_iter))
            except ImportError:
                continue
            names.append(name)
        for name, (med, _, _) in zip(names, timed_interleaved(fns, repeats)):
            row[f"{name}_ms"] = 1e3 * med
        for name in names[1:]:
            row[f"{name}_overhead"] = row[f"{name}_ms"] / row["core_ms"] - 1.0
        rows.append(row)
    return rows


def report(rows):
    lines = []
    for r in rows:
        parts = [f"{name} {r[f'{name}_ms']:.0f} ms ({100 * r[f'{name}_overhead']:+.1f} %)" for name in FRAMEWORKS
                 if f"{name}_ms" in r]
        lines.append(f"adapters {r['size']}x{r['size']} L={r['labels']} {r['iterations']} it, batch {r['batch']}, "
                     f"forward + backward: core {r['core_ms']:.0f} ms; " + ", ".join(parts))
    return "\n".join(lines)
